package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"mailproxy/internal/demo"
)

// imapConfig is one pool of the given backends (name=address pairs) behind
// a plain, a STARTTLS and an implicit-TLS IMAP listener.
func imapConfig(extra string, backends ...string) string {
	var b strings.Builder
	b.WriteString(`
[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
tls = "starttls"
pool = "main"

[[listener]]
name = "imaps"
protocol = "imap"
address = "127.0.0.1:2"
tls = "implicit"
pool = "main"

[[listener]]
name = "imap-tls-only"
protocol = "imap"
address = "127.0.0.1:3"
tls = "starttls"
require_tls = true
pool = "main"

[[pool]]
name = "main"
linger = "60s"
`)
	b.WriteString(extra)
	for i := 0; i+1 < len(backends); i += 2 {
		fmt.Fprintf(&b, "\n[[pool.backend]]\nname = %q\nimap = %q\n", backends[i], backends[i+1])
	}
	return b.String()
}

func dialIMAP(t *testing.T, e *env, mode string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = e.ClientTLS()
	var c *imapclient.Client
	var err error
	switch mode {
	case "plain":
		c, err = imapclient.DialInsecure(e.Addr["imap"], opts)
	case "starttls":
		c, err = imapclient.DialStartTLS(e.Addr["imap"], opts)
	case "implicit":
		c, err = imapclient.DialTLS(e.Addr["imaps"], opts)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", mode, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fetchAll(t *testing.T, c *imapclient.Client) []string {
	t.Helper()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
	msgs, err := c.Fetch(goimap.SeqSetNum(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), &goimap.FetchOptions{
		UID: true, Flags: true, BodySection: []*goimap.FetchItemBodySection{{}},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var out []string
	for _, m := range msgs {
		var body []byte
		for _, b := range m.BodySection {
			body = b.Bytes
		}
		out = append(out, fmt.Sprintf("uid=%d flags=%v body=%q", m.UID, m.Flags, body))
	}
	return out
}

func appendMsg(t *testing.T, c *imapclient.Client, body string) {
	t.Helper()
	cmd := c.Append("INBOX", int64(len(body)), nil)
	cmd.Write([]byte(body))
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("append: %v", err)
	}
}

// TestIMAPEndToEnd logs in through each kind of listener, then SELECT,
// APPEND, FETCH and IDLE, and compares with a direct connection.
func TestIMAPEndToEnd(t *testing.T) {
	back, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	for _, mode := range []string{"plain", "starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			updates := make(chan uint32, 16)
			c := dialIMAP(t, e, mode, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
				Mailbox: func(d *imapclient.UnilateralDataMailbox) {
					if d.NumMessages != nil {
						updates <- *d.NumMessages
					}
				},
			}})
			if err := c.Login("alice", "pw").Wait(); err != nil {
				t.Fatalf("login: %v", err)
			}
			if !c.Caps().Has(goimap.CapIMAP4rev1) {
				t.Errorf("capabilities after login lack IMAP4rev1: %v", c.Caps())
			}
			appendMsg(t, c, "Subject: via "+mode+"\r\n\r\nhello through mailproxy\r\n")
			got := fetchAll(t, c)

			direct, err := imapclient.DialInsecure(addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close()
			if err := direct.Login("alice", "pw").Wait(); err != nil {
				t.Fatal(err)
			}
			want := fetchAll(t, direct)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("through proxy:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}

			idle, err := c.Idle()
			if err != nil {
				t.Fatalf("idle: %v", err)
			}
			// go-imap's server can miss an update that arrives between its
			// "+ idling" and the start of its wait (a library race), so
			// append again until one is announced.
			got2 := uint32(0)
			for try := 0; try < 5 && got2 == 0; try++ {
				appendMsg(t, direct, "Subject: while idling\r\n\r\nnew\r\n")
				select {
				case got2 = <-updates:
				case <-time.After(2 * time.Second):
				}
			}
			if got2 <= uint32(len(want)) {
				t.Fatalf("IDLE reported %d messages, want more than %d", got2, len(want))
			}
			if err := idle.Close(); err != nil {
				t.Fatal(err)
			}
			if err := idle.Wait(); err != nil {
				t.Fatal(err)
			}
			if err := c.Logout().Wait(); err != nil {
				t.Fatalf("logout: %v", err)
			}
		})
	}
	_ = back
}

// TestIMAPWrongPasswordThenRight: the backend's NO reaches the client, and
// the same connection can log in afterwards.
func TestIMAPWrongPasswordThenRight(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))

	direct := dialScript(t, addr)
	direct.expect("* OK")
	direct.send("x LOGIN alice wrong\r\n")
	backendNo := strings.TrimPrefix(direct.expect("x NO"), "x ")

	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK [CAPABILITY ")
	s.send("a LOGIN alice wrong\r\n")
	if got := strings.TrimPrefix(s.expect("a NO"), "a "); got != backendNo {
		t.Errorf("proxy said %q, backend said %q", got, backendNo)
	}
	s.send("b LOGIN alice pw\r\n")
	ok := s.expect("b OK [CAPABILITY ")
	if !strings.Contains(ok, "IMAP4rev1") {
		t.Errorf("login OK lacks the backend's capabilities: %q", ok)
	}
	s.send("c SELECT INBOX\r\n")
	for !strings.HasPrefix(s.expect(""), "c OK") {
	}
}

// TestIMAPLoginSyntax covers the argument forms real clients use:
// quoted strings, synchronising and non-synchronising literals, SASL-IR,
// the AUTHENTICATE continuation, LOGIN mechanism and "*" to cancel.
func TestIMAPLoginSyntax(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": `p"w d`}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00p\"w d"))
	cases := []struct {
		name string
		run  func(s *script)
	}{
		{"quoted", func(s *script) {
			s.send(`a LOGIN "alice" "p\"w d"` + "\r\n")
		}},
		{"literal", func(s *script) {
			s.send("a LOGIN {5}\r\n")
			s.expect("+ ")
			s.send("alice {5}\r\n")
			s.expect("+ ")
			s.send("p\"w d\r\n")
		}},
		{"literal+", func(s *script) {
			s.send("a LOGIN {5+}\r\nalice {5+}\r\np\"w d\r\n")
		}},
		{"sasl-ir", func(s *script) {
			s.send("a AUTHENTICATE PLAIN " + plain + "\r\n")
		}},
		{"continuation", func(s *script) {
			s.send("a AUTHENTICATE PLAIN\r\n")
			s.expect("+ ")
			s.send(plain + "\r\n")
		}},
		{"login-mech", func(s *script) {
			s.send("a AUTHENTICATE LOGIN\r\n")
			s.expect("+ " + base64.StdEncoding.EncodeToString([]byte("Username:")))
			s.send(base64.StdEncoding.EncodeToString([]byte("alice")) + "\r\n")
			s.expect("+ " + base64.StdEncoding.EncodeToString([]byte("Password:")))
			s.send(base64.StdEncoding.EncodeToString([]byte(`p"w d`)) + "\r\n")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := dialScript(t, e.Addr["imap"])
			s.expect("* OK")
			tc.run(s)
			s.expect("a OK [CAPABILITY ")
		})
	}
	t.Run("cancel", func(t *testing.T) {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a AUTHENTICATE PLAIN\r\n")
		s.expect("+ ")
		s.send("*\r\n")
		s.expect("a BAD")
		s.send("b NOOP\r\n")
		s.expect("b OK")
	})
	t.Run("bad-before-login", func(t *testing.T) {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a SELECT INBOX\r\n")
		s.expect("a BAD")
		s.send("{bad\r\n")
		s.expect("* BAD")
		s.send("b LOGIN {99999999}\r\n")
		s.expect("b BAD")
		s.send("c ID (\"name\" \"test\")\r\n")
		s.expect(`* ID ("name" "mailproxy")`)
		s.expect("c OK")
		s.send("d LOGOUT\r\n")
		s.expect("* BYE")
		s.expect("d OK")
		s.expectClosed()
	})
	t.Run("too-many-errors", func(t *testing.T) {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		for i := range 9 {
			s.send(fmt.Sprintf("t%d FOO\r\n", i))
			s.expect(fmt.Sprintf("t%d BAD", i))
		}
		s.send("t9 FOO\r\n")
		s.expect("* BYE")
		s.expectClosed()
	})
	t.Run("long-line", func(t *testing.T) {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		// Answered with its tag, then closed (issue 10 point 3).
		s.send("a LOGIN " + strings.Repeat("x", 10000) + "\r\n")
		s.expect("a BAD Line too long")
		s.expect("* BYE")
		s.expectClosed()
	})
}

// TestIMAPRequireTLS: LOGINDISABLED before STARTTLS, and logins refused
// until it is done.
func TestIMAPRequireTLS(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	s := dialScript(t, e.Addr["imap-tls-only"])
	greeting := s.expect("* OK [CAPABILITY ")
	if !strings.Contains(greeting, "LOGINDISABLED") || strings.Contains(greeting, "AUTH=PLAIN") {
		t.Errorf("greeting before TLS: %q", greeting)
	}
	s.send("a LOGIN alice pw\r\n")
	s.expect("a NO [PRIVACYREQUIRED]")
	s.send("b AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")) + "\r\n")
	s.expect("b NO [PRIVACYREQUIRED]")
	s.send("c STARTTLS\r\n")
	s.expect("c OK")
	s.upgrade(e.ClientTLS())
	s.send("d CAPABILITY\r\n")
	caps := s.expect("* CAPABILITY")
	if strings.Contains(caps, "LOGINDISABLED") || strings.Contains(caps, "STARTTLS") || !strings.Contains(caps, "AUTH=PLAIN") {
		t.Errorf("capabilities after TLS: %q", caps)
	}
	s.expect("d OK")
	s.send("e LOGIN alice pw\r\n")
	s.expect("e OK")
}

// TestIMAPStartTLSInjection: a command pipelined in the same packet after
// STARTTLS must not be executed, before or after the handshake.
func TestIMAPStartTLSInjection(t *testing.T) {
	back, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	tr := demo.NewTracker()
	back.Tracker = tr
	e := startProxy(t, imapConfig("", "mail1", addr))
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a STARTTLS\r\nb LOGIN alice pw\r\n")
	s.expect("a OK")
	s.upgrade(e.ClientTLS())
	s.send("c NOOP\r\n")
	if line := s.expect("c "); line != "c OK NOOP completed." {
		t.Fatalf("after STARTTLS got %q: the injected command left a trace", line)
	}
	if n := len(tr.Sessions("alice")); n != 0 {
		t.Fatalf("the injected LOGIN was executed: alice has sessions on %d backends", n)
	}
}

// TestIMAPStickiness: with three backends, concurrent sessions of a user
// share one backend, users spread evenly, and a user coming back within
// linger returns to the same backend even when hashing changed.
func TestIMAPStickiness(t *testing.T) {
	tr := demo.NewTracker()
	all := users(320, "user")
	var cfg []string
	backs := map[string]*demo.IMAPServer{}
	for _, name := range []string{"mail1", "mail2", "mail3"} {
		b, addr := imapBackend(t, name, all, nil)
		b.Tracker = tr
		backs[name] = b
		cfg = append(cfg, name, addr)
	}
	e := startProxy(t, imapConfig("", cfg...))

	t.Run("one-user-ten-sessions", func(t *testing.T) {
		var wg sync.WaitGroup
		clients := make([]*imapclient.Client, 10)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
				if err != nil {
					t.Error(err)
					return
				}
				clients[i] = c
				if err := c.Login("user7", "pw").Wait(); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		got := tr.Sessions("user7")
		if len(got) != 1 {
			t.Errorf("user7's 10 sessions are on %v, want one backend", got)
		}
		for _, n := range got {
			if n != 10 {
				t.Errorf("user7 has %d sessions, want 10", n)
			}
		}
		for _, c := range clients {
			if c != nil {
				c.Logout().Wait()
				c.Close()
			}
		}
	})

	t.Run("spread", func(t *testing.T) {
		count := map[string]int{}
		for i := range 300 {
			user := fmt.Sprintf("user%d", i)
			c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(user, "pw").Wait(); err != nil {
				t.Fatal(err)
			}
			for b := range tr.Sessions(user) {
				count[b]++
			}
			c.Logout().Wait()
			c.Close()
		}
		t.Logf("300 users: %v", count)
		for b, n := range count {
			if n > 120 {
				t.Errorf("backend %s has %d of 300 users (over 40%%)", b, n)
			}
		}
		if len(count) != 3 {
			t.Errorf("users landed on %d backends, want 3", len(count))
		}
	})

	t.Run("linger", func(t *testing.T) {
		// Every user above logged out less than linger ago. Make hashing
		// prefer mail3 for nearly everyone; lingering users must not move.
		pool := e.Srv.Pool("main")
		pool.SetWeight(pool.Backend("mail3"), 1000)
		for i := range 30 {
			user := fmt.Sprintf("user%d", i)
			before, _, _, _ := pool.Lookup(context.Background(), user)
			c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(user, "pw").Wait(); err != nil {
				t.Fatal(err)
			}
			if s := tr.Sessions(user); s[before] != 1 {
				t.Errorf("%s was on %s and came back to %v", user, before, s)
			}
			c.Logout().Wait()
			c.Close()
		}
		// Users never seen go where the new weights say.
		onMail3 := 0
		for i := 300; i < 320; i++ {
			user := fmt.Sprintf("user%d", i)
			c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(user, "pw").Wait(); err != nil {
				t.Fatal(err)
			}
			onMail3 += tr.Sessions(user)["mail3"]
			c.Logout().Wait()
			c.Close()
		}
		if onMail3 < 18 {
			t.Errorf("only %d of 20 new users went to the weight-1000 backend", onMail3)
		}
	})

	if s := tr.Splits(); len(s) > 0 {
		t.Errorf("users split over backends: %v", s)
	}
}

// TestIMAPNoPasswordInLogs logs in every way, right and wrong, with debug
// logging on, and looks for the password in any form in the log.
func TestIMAPNoPasswordInLogs(t *testing.T) {
	const secret = "S3cret-Pa55word"
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": secret}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	for _, pw := range []string{secret, secret + "-wrong"} {
		c := dialIMAP(t, e, "plain", nil)
		c.Login("alice", pw).Wait()
		c.Close()
		c = dialIMAP(t, e, "starttls", nil)
		c.Authenticate(sasl.NewPlainClient("", "alice", pw))
		c.Close()
	}
	// Wait for every session's end line, so nothing is still to be logged.
	waitFor(t, 5*time.Second, "four session end lines", func() bool {
		return strings.Count(e.Logs.String(), "session end") >= 4
	})
	logs := e.Logs.String()
	forms := []string{secret, base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + secret))}
	for _, f := range forms {
		if strings.Contains(logs, f) {
			t.Fatalf("password form %q found in logs", f)
		}
	}
	if !strings.Contains(logs, "level=DEBUG") && !strings.Contains(logs, "login") {
		t.Fatal("log is empty: the test would pass vacuously")
	}
	if !bytes.Contains([]byte(logs), []byte("user=alice")) {
		t.Error("logs do not name the user")
	}
}
