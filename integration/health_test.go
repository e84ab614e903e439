package integration

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/routing"
	mtls "mailproxy/tls"
)

// healthFast is the [pool.health] of the timing tests. timeout is not
// above interval, the setting for which "down within fall × interval plus
// one timeout" holds for a backend that hangs as well as for one that
// refuses (a probe that outlasts the interval delays the next one).
const healthFast = `
  [pool.health]
  interval = "100ms"
  timeout = "100ms"
  rise = 2
  fall = 2
`

// TestHealthDownAndUpTimes is issue 6 item 4: a backend killed during the
// test is marked down within fall × interval + timeout, and up within
// rise × interval of coming back (each with 2× slack for a loaded test
// machine; the measured times are logged). It also checks the log lines
// and that sessions move while it is down.
func TestHealthDownAndUpTimes(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(3, "u"), nil, 1)
	f2 := newOpsBackend(t, "mail2", users(3, "u"), nil, 2)
	e := startProxy(t, opsConfig(healthFast, "mail1", f1.addr, "mail2", f2.addr))
	pool, b := e.Srv.Pool("p"), e.Srv.Pool("p").Backend("mail1")
	hc := e.Cfg.Pools[0].Health
	downLimit := time.Duration(hc.Fall)*hc.Interval.Duration + hc.Timeout.Duration
	upLimit := time.Duration(hc.Rise) * hc.Interval.Duration
	state := func() routing.State { return pool.State(b, routing.IMAP) }

	for round := range 2 {
		killed := time.Now()
		f1.stop()
		waitFor(t, 5*time.Second, "mail1 down", func() bool { return state() == routing.Down })
		down := time.Since(killed)

		// Every user is served by mail2 meanwhile.
		for i := range 3 {
			c := mustLogin(t, e, fmt.Sprintf("u%d", i))
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil || sel.NumMessages != 2 {
				t.Errorf("u%d while mail1 is down: %v messages, %v; want mail2's 2", i, sel, err)
			}
			c.Logout().Wait()
		}

		back := time.Now()
		f1.start()
		waitFor(t, 5*time.Second, "mail1 up", func() bool { return state() == routing.Up })
		up := time.Since(back)
		t.Logf("round %d: down after %v (limit %v), up after %v (limit %v)", round, down, downLimit, up, upLimit)
		if down > 2*downLimit {
			t.Errorf("round %d: marked down %v after the kill, want within %v (2× %v)", round, down, 2*downLimit, downLimit)
		}
		if up > 2*upLimit {
			t.Errorf("round %d: marked up %v after the return, want within %v (2× %v)", round, up, 2*upLimit, upLimit)
		}
	}
	logs := e.Logs.String()
	for _, want := range []string{
		`level=WARN msg="backend down" pool=p backend=mail1 protocol=imap reason="check failed: connect: dial tcp ` + f1.addr + `: connect: connection refused"`,
		`level=INFO msg="backend up" pool=p backend=mail1 protocol=imap reason="check passed" state=up`,
	} {
		if strings.Count(logs, want) != 2 {
			t.Errorf("log has %d of %s, want 2", strings.Count(logs, want), want)
		}
	}
	if strings.Contains(logs, "backend=mail2 protocol=imap reason") {
		t.Errorf("mail2 changed state")
	}
}

// TestHealthHungBackend: a backend that accepts but never greets is marked
// down within the same bound, with the reason.
func TestHealthHungBackend(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, opsConfig(healthFast, "mail1", f1.addr))
	pool, b := e.Srv.Pool("p"), e.Srv.Pool("p").Backend("mail1")
	hc := e.Cfg.Pools[0].Health
	limit := time.Duration(hc.Fall)*hc.Interval.Duration + hc.Timeout.Duration

	f1.stop()
	hung := time.Now()
	ln, err := relisten(f1.addr)
	if err != nil {
		t.Fatal(err)
	}
	silent := acceptSilently(ln)
	t.Cleanup(silent.close)
	waitFor(t, 5*time.Second, "mail1 down", func() bool { return pool.State(b, routing.IMAP) == routing.Down })
	down := time.Since(hung)
	t.Logf("hung backend down after %v (limit %v)", down, limit)
	if down > 2*limit {
		t.Errorf("marked down %v after it hung, want within %v (2× %v)", down, 2*limit, limit)
	}
	if r := pool.Status()[0].Reason["imap"]; !strings.Contains(r, "read greeting") || !strings.Contains(r, "timeout") {
		t.Errorf("reason %q, want a greeting timeout", r)
	}
}

// TestHealthImplicitTLS: with tls = "implicit" the check does the TLS
// handshake before it reads the greeting; a backend that does not speak
// TLS there is down with a TLS reason.
func TestHealthImplicitTLS(t *testing.T) {
	certFile, keyFile, err := mtls.WriteSelfSigned(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int64
	secure := &opsBackend{t: t, name: "secure", users: users(1, "u"), msgs: 1, addr: "127.0.0.1:0",
		wrap: func(ln net.Listener) net.Listener {
			return tls.NewListener(ln, &tls.Config{
				Certificates: []tls.Certificate{cert},
				VerifyConnection: func(tls.ConnectionState) error {
					handshakes.Add(1)
					return nil
				},
			})
		}}
	secure.start()
	t.Cleanup(secure.stop)
	plain := newOpsBackend(t, "plain", users(1, "u"), nil, 2)
	backends := ""
	for _, b := range []*opsBackend{secure, plain} {
		backends += fmt.Sprintf("\n[[pool.backend]]\nname = %q\nimap = %q\ntls = \"implicit\"\ntls_ca = %q\n", b.name, b.addr, certFile)
	}
	e := startProxy(t, opsConfig(healthFast)+backends)
	pool := e.Srv.Pool("p")

	waitFor(t, 5*time.Second, "plain down", func() bool { return pool.State(pool.Backend("plain"), routing.IMAP) == routing.Down })
	waitFor(t, 5*time.Second, "four checks of secure", func() bool { return handshakes.Load() >= 4 })
	if s := pool.State(pool.Backend("secure"), routing.IMAP); s != routing.Up {
		t.Errorf("secure is %v after %d TLS checks", s, handshakes.Load())
	}
	if r := pool.Status()[1].Reason["imap"]; !strings.Contains(r, "check failed: tls") {
		t.Errorf("plain's reason %q, want a TLS failure", r)
	}
	c := mustLogin(t, e, "u0")
	if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 1 {
		t.Errorf("session over implicit TLS: %v, %v", sel, err)
	}
	c.Logout().Wait()
}

// silentListener accepts connections and never writes to them.
type silentListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func acceptSilently(ln net.Listener) *silentListener {
	s := &silentListener{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *silentListener) close() {
	s.ln.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}
