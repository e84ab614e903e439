package testkit

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// echoOnce answers each connection with one line; Close stops Serve.
type echoOnce struct {
	mu     sync.Mutex
	ln     net.Listener
	closed bool
}

func (e *echoOnce) Serve(ln net.Listener) error {
	e.mu.Lock()
	e.ln = ln
	e.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		fmt.Fprintf(c, "hello\r\n")
		c.Close()
	}
}

func (e *echoOnce) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	if e.ln == nil {
		return errors.New("not serving")
	}
	return e.ln.Close()
}

func TestServe(t *testing.T) {
	srv := &echoOnce{}
	t.Run("serve", func(t *testing.T) {
		addr := Serve(t, srv)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 7)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hello\r\n" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	})
	// The subtest's cleanup has run: srv is closed and Serve returned.
	if !srv.closed {
		t.Error("Serve left the server open")
	}
}

func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); fmt.Fprintf(&b, "%d\n", i) }()
	}
	wg.Wait()
	if got := len(b.String()); got != 20 {
		t.Errorf("%d bytes, want 20", got)
	}
}
