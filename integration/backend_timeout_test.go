package integration

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
)

// hungBackendConfig is one plain listener per protocol in front of pool
// "p": backend "hung" accepts TCP and never says a word, "good" is a demo
// backend. fall is high and checks run once, so only backend_timeout
// keeps sessions from waiting on "hung": it stays up throughout.
func hungBackendConfig(hung, good [3]string) string {
	return fmt.Sprintf(`
[limits]
auth_failure_delay = "0s"
login_timeout = "5s"
backend_timeout = "300ms"
max_connections_per_ip = 10000

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "p"

[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:2"
pool = "p"

[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:3"
pool = "p"

[[pool]]
name = "p"
  [pool.health]
  interval = "1h"
  rise = 1
  fall = 1000
  [[pool.backend]]
  name = "hung"
  imap = %q
  pop3 = %q
  smtp = %q
  [[pool.backend]]
  name = "good"
  imap = %q
  pop3 = %q
  smtp = %q
`, hung[0], hung[1], hung[2], good[0], good[1], good[2])
}

// TestBackendTimeoutHungBackend (issue 10, point 4): a backend that accepts
// TCP and never greets costs a login at most backend_timeout, after which
// the next backend is tried, for IMAP, POP3 and SMTP alike; a well-behaved
// client logging in on another connection meanwhile always gets in under
// a second.
func TestBackendTimeoutHungBackend(t *testing.T) {
	var hung [3]string
	for i := range hung {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := acceptSilently(ln)
		t.Cleanup(s.close)
		hung[i] = ln.Addr().String()
	}
	all := users(40, "u")
	all["steady"] = "pw"
	_, imapAddr := imapBackend(t, "good", all, nil)
	_, pop3Addr := pop3Backend(t, "good", all, nil)
	_, smtpAddr := smtpBackend(t, "good", demo.SMTPOptions{})
	e := startProxy(t, hungBackendConfig(hung, [3]string{imapAddr, pop3Addr, smtpAddr}))
	timeout := e.Cfg.Limits.BackendTimeout.Duration

	// The well-behaved client: one IMAP login after another on its own
	// connections, for as long as the others run.
	stop := make(chan struct{})
	var steady sync.WaitGroup
	var steadyWorst time.Duration
	var steadyErr error
	steadyN := 0
	steady.Go(func() {
		pace := time.NewTicker(10 * time.Millisecond)
		defer pace.Stop()
		for {
			select {
			case <-stop:
				return
			case <-pace.C:
			}
			start := time.Now()
			c, err := loginIMAP(e.Addr["imap"], "steady")
			if err != nil {
				steadyErr = err
				return
			}
			c.Logout().Wait()
			c.Close()
			steadyWorst, steadyN = max(steadyWorst, time.Since(start)), steadyN+1
		}
	})

	worst := map[string]time.Duration{}
	failed := false
	timed := func(proto string, f func() error) {
		t.Helper()
		start := time.Now()
		if err := f(); err != nil {
			t.Errorf("%s after %v: %v", proto, time.Since(start), err)
			failed = true
		}
		worst[proto] = max(worst[proto], time.Since(start))
	}
	for i := 0; i < 12 && !failed; i++ {
		user := fmt.Sprintf("u%d", i)
		timed("imap", func() error {
			c, err := loginIMAP(e.Addr["imap"], user)
			if err == nil {
				c.Logout().Wait()
				c.Close()
			}
			return err
		})
		timed("pop3", func() error { return pop3Session(e.Addr["pop3"], fmt.Sprintf("u%d", 20+i), "pw") })
		timed("smtp", func() error {
			c, err := gosmtp.Dial(e.Addr["smtp"])
			if err != nil {
				return err
			}
			defer c.Close()
			return c.SendMail("a@example.org", []string{"b@example.org"}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		})
	}
	close(stop)
	steady.Wait()

	logs := e.Logs.String()
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		skipped := strings.Contains(grepLines(grepLines(logs, "listener="+proto), "backend failed"), "backend=hung")
		t.Logf("%s: slowest %v (backend_timeout %v), skipped the hung backend: %v", proto, worst[proto], timeout, skipped)
		if !skipped {
			t.Errorf("%s: no session tried the hung backend: the test proves nothing", proto)
		}
		if worst[proto] > timeout+700*time.Millisecond {
			t.Errorf("%s: a session took %v, want backend_timeout (%v) and a normal login", proto, worst[proto], timeout)
		}
	}
	t.Logf("well-behaved client: %d logins, slowest %v", steadyN, steadyWorst)
	if steadyErr != nil {
		t.Errorf("well-behaved client: %v", steadyErr)
	}
	if steadyN == 0 || steadyWorst >= time.Second {
		t.Errorf("well-behaved client: %d logins, slowest %v; want every one under a second", steadyN, steadyWorst)
	}
	if st := e.Srv.Pool("p").Status()[0]; st.State != "up" {
		t.Errorf("backend %s is %s: sessions alone must not have taken it down (fall = 1000)", st.Name, st.State)
	}
}

// TestBackendTimeoutLogin: backend_timeout bounds the backend login as
// well: a backend that greets and then never answers LOGIN is charged and
// the next backend tried, so the client is logged in after about
// backend_timeout, not after login_timeout; with no other backend left it
// gets a tagged NO after backend_timeout.
func TestBackendTimeoutLogin(t *testing.T) {
	back := &testkit.ConnServer{Handle: func(c net.Conn) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] stuck\r\n")
		io.Copy(io.Discard, c) // reads the login, never answers
	}}
	addr := testkit.Serve(t, back)
	_, good := imapBackend(t, "good", users(10, "u"), nil)
	cfg := strings.Replace(opsConfig("", "stuck", addr, "good", good), "[limits]\n", "[limits]\nbackend_timeout = \"300ms\"\nlogin_timeout = \"20s\"\n", 1)
	e := startProxy(t, cfg)
	tried := false
	for i := 0; i < 10 && !tried; i++ {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		start := time.Now()
		s.send(fmt.Sprintf("a LOGIN u%d pw\r\n", i))
		s.expect("a OK")
		took := time.Since(start)
		tried = strings.Contains(grepLines(e.Logs.String(), "backend failed"), "backend=stuck")
		t.Logf("u%d logged in after %v (stuck backend tried so far: %v)", i, took, tried)
		if took > 2*time.Second {
			t.Errorf("login answered after %v, want about backend_timeout (300ms)", took)
		}
	}
	if !tried {
		t.Fatal("no login tried the stuck backend: the test proves nothing")
	}

	// The stuck backend alone: a tagged NO after backend_timeout.
	cfg = strings.Replace(opsConfig("", "stuck", addr), "[limits]\n", "[limits]\nbackend_timeout = \"300ms\"\nlogin_timeout = \"20s\"\n", 1)
	e = startProxy(t, cfg)
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	start := time.Now()
	s.send("a LOGIN u0 pw\r\n")
	s.expect("a NO")
	took := time.Since(start)
	t.Logf("only the stuck backend: login answered after %v", took)
	if took > 2*time.Second {
		t.Errorf("login answered after %v, want about backend_timeout (300ms)", took)
	}
}

// TestBackendTimeoutSMTPAuth: backend_timeout bounds SMTP's backend login
// too: a backend that greets and answers EHLO but never answers AUTH
// gives the client a temporary failure after backend_timeout (and one
// retry), not after SMTP's five-minute command timeout.
func TestBackendTimeoutSMTPAuth(t *testing.T) {
	back := &testkit.ConnServer{Handle: func(c net.Conn) {
		r := bufio.NewReader(c)
		io.WriteString(c, "220 stuck.test ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch cmd := strings.ToUpper(strings.Fields(line + " x")[0]); cmd {
			case "EHLO":
				io.WriteString(c, "250-stuck.test\r\n250 AUTH PLAIN LOGIN\r\n")
			case "AUTH":
				io.Copy(io.Discard, r) // never answers
				return
			default:
				io.WriteString(c, "250 ok\r\n")
			}
		}
	}}
	addr := testkit.Serve(t, back)
	cfg := strings.Replace(smtpConfig(smtpListeners, smtpBack{"stuck", addr, ""}), "[limits]\n", "[limits]\nbackend_timeout = \"300ms\"\n", 1)
	e := startProxy(t, cfg)
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220")
	s.send("EHLO client.example\r\n")
	for !strings.HasPrefix(s.expect("250"), "250 ") {
	}
	start := time.Now()
	s.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")) + "\r\n")
	s.expect("454")
	took := time.Since(start)
	t.Logf("AUTH answered after %v", took)
	if took > 2*time.Second {
		t.Errorf("AUTH answered after %v, want about twice backend_timeout (300ms)", took)
	}
}
