package proxy

import (
	"errors"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/proxy/config"
)

// TestHoldListeners: a standby's held address refuses a connection at
// once, the listener opens on the same socket, and it is held again after
// it closes. An address that is not on this host can be held too
// (IP_FREEBIND), as the virtual address of a standby is not.
func TestHoldListeners(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	cfg, err := config.Parse([]byte(`
[admin]
listen = ""
[[listener]]
name = "imap"
protocol = "imap"
address = "`+addr+`"
pool = "p"
[[listener]]
name = "vip"
protocol = "imap"
address = "192.0.2.55:14300"
pool = "p"
[[listener]]
name = "vip6"
protocol = "imap"
address = "[2001:db8::55]:14300"
pool = "p"
[[pool]]
name = "p"
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:2"
`), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler), Handlers: map[string]protocols.Handler{"imap": imap.Handler{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.HoldListeners(); err != nil {
		t.Fatal(err)
	}
	refused := func(when string) {
		t.Helper()
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("%s: a held address accepted a connection", when)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			t.Errorf("%s: %v after %v, want refused at once", when, err, time.Since(start))
		}
	}
	refused("standby")
	if _, err := net.Listen("tcp", addr); err == nil {
		t.Error("another process could take the held port")
	}
	if err := s.OpenListeners(); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("active: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 100)); err != nil { // the greeting: the session is live
		t.Fatal(err)
	}
	// Stepping down with the session still open: the server closes it
	// first, so its socket lingers on the port; holding must work anyway.
	s.CloseListeners()
	s.CloseSessions()
	s.mu.Lock()
	held := len(s.held)
	s.mu.Unlock()
	if held != len(cfg.Listeners) {
		t.Errorf("%d of %d addresses held again after stepping down", held, len(cfg.Listeners))
	}
	refused("standby again")
	if err := s.OpenListeners(); err != nil {
		t.Fatalf("active again: %v", err)
	}
}
