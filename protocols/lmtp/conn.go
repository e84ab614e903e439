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

// oneConnListener hands one connection to go-smtp's Server.Serve and then
// blocks until closed. Serve calls Accept again only after it has counted
// the connection's goroutine, so handedOff closing means Shutdown will wait
// for that goroutine.
type oneConnListener struct {
	conn      net.Conn // nil once taken; only Serve's goroutine touches it
	handedOff chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, handedOff: make(chan struct{}), done: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	select {
	case <-l.handedOff:
	default:
		close(l.handedOff)
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return oneConnAddr{} }

type oneConnAddr struct{}

func (oneConnAddr) Network() string { return "tcp" }
func (oneConnAddr) String() string  { return "session" }
