package peer

import (
	"bytes"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// memNet is a lossless in-memory UDP network for tests in a synctest
// bubble: a blocked read is a channel receive, so fake time can advance.
type memNet struct {
	mu    sync.Mutex
	conns map[string]*memConn
	port  int
}

func newMemNet() *memNet { return &memNet{conns: map[string]*memConn{}, port: 7000} }

// listen opens a conn on the next free 127.0.0.1 port.
func (n *memNet) listen() *memConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.port++
	c := &memConn{net: n, addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: n.port},
		in: make(chan datagram, 64), closed: make(chan struct{})}
	n.conns[c.addr.String()] = c
	return c
}

func (n *memNet) lookup(a net.Addr) *memConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.conns[a.String()]
}

// memConn is one socket of a memNet. cut makes it deaf and mute, as a
// crashed or cut-off host is, without closing it.
type memConn struct {
	net    *memNet
	addr   *net.UDPAddr
	in     chan datagram
	closed chan struct{}
	once   sync.Once
	cut    atomic.Bool
	// tap, when set, sees every datagram delivered to this conn.
	tap      atomic.Pointer[func([]byte)]
	deadline atomic.Pointer[time.Time] // read deadline; zero = none
}

var _ net.PacketConn = (*memConn)(nil)

func (c *memConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var timeout <-chan time.Time
	if dl := c.deadline.Load(); dl != nil && !dl.IsZero() {
		d := time.Until(*dl)
		if d <= 0 { // as a real socket: a past deadline fails before reading
			return 0, nil, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case d := <-c.in:
		return copy(b, d.b), d.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (c *memConn) WriteTo(b []byte, to net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	dst := c.net.lookup(to)
	if c.cut.Load() || dst == nil || dst.cut.Load() {
		return len(b), nil // lost, as UDP loses
	}
	if tap := dst.tap.Load(); tap != nil {
		(*tap)(bytes.Clone(b))
	}
	select {
	case dst.in <- datagram{b: bytes.Clone(b), from: c.addr}:
	default: // a full queue drops
	}
	return len(b), nil
}

func (c *memConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *memConn) LocalAddr() net.Addr               { return c.addr }
func (c *memConn) SetDeadline(time.Time) error       { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error { c.deadline.Store(&t); return nil }
func (c *memConn) SetWriteDeadline(time.Time) error  { return nil }

// fakeService records what a Node switches.
type fakeService struct {
	mu        sync.Mutex
	open      bool
	opens     int
	failOpens int // the first this many OpenListeners fail
	closes    int
	ended     int // CloseSessions calls
	sessions  int // what CloseSessions reports
	onOpen    func()
}

var _ Service = (*fakeService)(nil)

func (s *fakeService) OpenListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opens++
	if s.onOpen != nil {
		s.onOpen()
	}
	if s.opens <= s.failOpens {
		return &net.OpError{Op: "listen", Net: "tcp", Err: errAddrInUse}
	}
	s.open = true
	return nil
}

func (s *fakeService) CloseListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open = false
	s.closes++
}

func (s *fakeService) CloseSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended++
	return s.sessions
}

func (s *fakeService) state() (open bool, opens, closes, ended int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open, s.opens, s.closes, s.ended
}

type addrInUse struct{}

func (addrInUse) Error() string { return "address already in use" }

var errAddrInUse error = addrInUse{}
