package smtp

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// frontConn is the client connection as go-smtp's server sees it. It sets
// a fresh deadline before every read and write, never past the login
// deadline until loggedIn, reports Close on closed, and can close itself
// right after the next reply (closeAfterReply), for the 421 that ends a
// session go-smtp would otherwise keep open.
type frontConn struct {
	net.Conn
	readTimeout, writeTimeout time.Duration

	loginBy    atomic.Int64 // Unix nanoseconds; 0 once logged in, or with no bound
	greeted    atomic.Bool  // the greeting is written
	inTLS      atomic.Bool  // a 220 after the greeting: STARTTLS goes ahead
	closed     chan struct{}
	closeOnce  sync.Once
	closeAfter atomic.Bool
	in, out    atomic.Int64 // bytes read and written, for the session log

	// pending holds the lines of a multi-line reply ("250-...") until its
	// last line: go-smtp writes (and flushes) each line on its own, and an
	// EHLO reply would go out as ten segments, each waking the client,
	// where a mail server sends one. Only go-smtp's goroutine writes.
	pending []byte
}

// maxPending bounds what Write holds back of a multi-line reply.
const maxPending = 4096

// loginGrace is how long after the login deadline the reply that says so
// may take to write.
const loginGrace = time.Second

func newFrontConn(c net.Conn, read, write time.Duration, loginBy time.Time) *frontConn {
	fc := &frontConn{Conn: c, readTimeout: read, writeTimeout: write, closed: make(chan struct{})}
	if !loginBy.IsZero() {
		fc.loginBy.Store(loginBy.UnixNano())
	}
	return fc
}

// loggedIn lifts the login deadline: the client authenticated or started
// a transaction.
func (c *frontConn) loggedIn() { c.loginBy.Store(0) }

// deadline is now+d, but not past the login deadline plus grace.
func (c *frontConn) deadline(d, grace time.Duration) time.Time {
	dl := time.Now().Add(d)
	if by := c.loginBy.Load(); by != 0 {
		if lb := time.Unix(0, by).Add(grace); lb.Before(dl) {
			return lb
		}
	}
	return dl
}

func (c *frontConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline(c.readTimeout, 0))
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

// Write writes p, unless it is a plain-text reply after STARTTLS went
// ahead. SMTP says 220 only to greet and to start TLS (RFC 3207); after the
// latter the client speaks TLS, and a plain-text reply (go-smtp's to a
// failed handshake, or a timeout's) would only garble its handshake, so
// the connection ends without it. TLS records never start with a digit.
func (c *frontConn) Write(p []byte) (int, error) {
	if len(p) > 0 && p[0] >= '0' && p[0] <= '9' {
		if c.inTLS.Load() {
			c.Close()
			return 0, net.ErrClosed
		}
		if continuation(p) && len(c.pending)+len(p) <= maxPending {
			c.pending = append(c.pending, p...)
			return len(p), nil
		}
		if c.greeted.Swap(true) && bytes.HasPrefix(p, []byte("220")) && len(c.pending) == 0 {
			c.inTLS.Store(true)
		}
	}
	held := len(c.pending)
	if held > 0 {
		p = append(c.pending, p...)
		c.pending = c.pending[:0]
	}
	c.Conn.SetWriteDeadline(c.deadline(c.writeTimeout, loginGrace))
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	if c.closeAfter.Load() {
		c.Close()
	}
	return max(n-held, 0), err
}

// continuation says whether p is one whole line of a multi-line reply
// that more lines follow ("250-SIZE 10240000\r\n").
func continuation(p []byte) bool {
	return len(p) >= 6 && p[3] == '-' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9' &&
		bytes.IndexByte(p, '\n') == len(p)-1
}

// closeAfterReply makes the next write the last one.
func (c *frontConn) closeAfterReply() { c.closeAfter.Store(true) }

func (c *frontConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// maxReply bounds what go-smtp's client may read from a backend in answer
// to one command (its reader has no limit of its own): far more than any
// SMTP reply, and little memory.
const maxReply = 64 << 10

// errReplyTooLong is a backend that sent more than maxReply in answer to
// one command.
var errReplyTooLong = fmt.Errorf("%w: reply over %d bytes", errBackend, maxReply)

// replayConn is the backend connection go-smtp's client speaks over. Its
// reads start with bytes already consumed from it (the greeting), as
// go-smtp's client insists on reading a greeting itself; each write (a
// command, or a block of message data) allows the backend maxReply bytes
// more for its answer. Only the goroutine holding the session's lock uses
// it.
type replayConn struct {
	net.Conn
	r      io.Reader
	writes int64 // Write calls so far
	budget int64 // bytes the backend may still send
}

func newReplayConn(c net.Conn, r io.Reader) *replayConn {
	return &replayConn{Conn: c, r: r, budget: maxReply}
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.budget <= 0 {
		return 0, errReplyTooLong
	}
	if int64(len(p)) > c.budget {
		p = p[:c.budget]
	}
	n, err := c.r.Read(p)
	c.budget -= int64(n)
	return n, err
}

func (c *replayConn) Write(p []byte) (int, error) {
	c.writes++
	c.budget = maxReply
	return c.Conn.Write(p)
}
