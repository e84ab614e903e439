//go:build !linux

package proxy

import "net"

// listenTCP is the default Options.Listen: net.Listen, which sets
// keep-alive on each accepted connection.
func listenTCP(network, addr string) (net.Listener, error) { return net.Listen(network, addr) }
