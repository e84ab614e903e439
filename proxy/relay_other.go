//go:build !linux

package proxy

import (
	"net"
	"sync"
	"syscall"
)

// waiter is Linux-only, as is splicing: elsewhere a relay direction
// between TCP connections copies through the large pooled buffer, which
// it holds while it waits for the next burst. TLS sources wait without it
// (see direction.wait) on every system.
type waiter struct {
	rc   syscall.RawConn
	pool *sync.Pool
}

func newWaiter(src net.Conn) *waiter { return nil }

func (*waiter) wait() error { return nil }

func (*waiter) take() (*[]byte, int, error) { return nil, 0, nil }

// spliceBulk is never called: no direction splices without a waiter.
func (d *direction) spliceBulk() error { return errNoPipe }
