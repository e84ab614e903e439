// Package testkit holds the few helpers that the tests of several packages
// share: serving a fake backend on loopback for the length of a test, and a
// buffer that concurrent loggers write while the test reads it.
package testkit

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// Server is a backend with net/http's shape, as the demo servers have.
type Server interface {
	Serve(net.Listener) error
	Close() error
}

// Serve runs srv on a new 127.0.0.1:0 listener and returns its address.
// When the test ends it closes srv and the listener (srv may not have
// taken it yet) and waits for Serve to return.
func Serve(tb testing.TB, srv Server) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Close(); ln.Close(); <-done })
	return ln.Addr().String()
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, such as the
// handler of a logger that many sessions share. The zero value is empty.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p; it never fails.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ConnServer is the plumbing of a scripted fake backend: it runs Handle on
// each accepted connection in its own goroutine, closes the connection when
// Handle returns, and on Close closes the listener and every open
// connection. Set Handle before Serve.
type ConnServer struct {
	Handle func(net.Conn)

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
}

// Serve accepts on ln until Close.
func (s *ConnServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln, s.conns = ln, map[net.Conn]struct{}{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return net.ErrClosed
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.Handle(c)
		}()
	}
}

// Close stops the server and closes its connections.
func (s *ConnServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	if s.ln != nil {
		return s.ln.Close()
	}
	return nil
}

// Eventually checks cond every interval until it holds or d has passed,
// and reports whether it held. It is for state that sends no event: another
// process's logs, a counter behind an API, a port another socket may hold.
func Eventually(d, interval time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
			if cond() {
				return true
			}
		}
	}
}
