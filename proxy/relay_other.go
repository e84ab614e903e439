//go:build !linux

package proxy

import "syscall"

// Waiting in the network poller is Linux-only, as is splicing: elsewhere
// a relay direction between TCP connections copies through the large
// pooled buffer, which it holds while it waits for the next burst, and
// direction.tcp stays false. TLS sources wait without it (see
// direction.wait) on every system.
type waiter struct {
	rc syscall.RawConn // never set: nothing parks here
}

func (*direction) initWaiter() {}

func (*waiter) wait() error { return nil }

func (*waiter) take() (*[]byte, int, error) { return nil, 0, nil }

// spliceBulk is never called: no direction splices without a waiter.
func (d *direction) spliceBulk() error { return errNoPipe }
