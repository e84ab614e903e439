package lmtp

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The two types here are the ones package smtp has for the same purpose:
// go-smtp's server serves listeners and sets no deadlines of its own.

// frontConn is the client connection as go-smtp's server sees it. It sets
// a fresh deadline before every read and write, reports Close on closed,
// and can close itself right after the next reply (closeAfterReply), for
// the 421 that ends a session go-smtp would otherwise keep open.
type frontConn struct {
	net.Conn
	readTimeout, writeTimeout time.Duration

	closed     chan struct{}
	closeOnce  sync.Once
	closeAfter atomic.Bool
	in, out    atomic.Int64 // bytes read and written, for the session log
}

func newFrontConn(c net.Conn, read, write time.Duration) *frontConn {
	return &frontConn{Conn: c, readTimeout: read, writeTimeout: write, closed: make(chan struct{})}
}

func (c *frontConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.readTimeout))
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *frontConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	if c.closeAfter.Load() {
		c.Close()
	}
	return n, err
}

// closeAfterReply makes the next write the last one.
func (c *frontConn) closeAfterReply() { c.closeAfter.Store(true) }

func (c *frontConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
