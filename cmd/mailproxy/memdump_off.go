//go:build !memdump

package main

// startMemDump does nothing in release builds; see memdump.go.
func startMemDump() {}
