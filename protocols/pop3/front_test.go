package pop3

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"mailproxy/internal/demo"
	"mailproxy/protocols"
)

const msg1 = "From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n.dotted line\r\n"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// withDemo is an env in front of a demo backend with alice/pw and one
// message.
func withDemo(t *testing.T, opts func(*demo.POP3Server)) (*env, *demo.POP3Server) {
	srv, addr := demoBackend(t, map[string]string{"alice": "pw"}, opts)
	srv.Add("alice", msg1)
	return newEnv(t, addr), srv
}

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name       string
		tls        bool // listener has a certificate
		active     bool // implicit TLS
		requireTLS bool
		want, not  []string
	}{
		{"plain listener", false, false, false, []string{"USER", "SASL PLAIN LOGIN", "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION mailproxy"}, []string{"STLS"}},
		{"starttls listener", true, false, false, []string{"STLS", "USER", "SASL PLAIN LOGIN"}, nil},
		{"starttls listener, require_tls", true, false, true, []string{"STLS", "TOP", "UIDL"}, []string{"USER", "SASL PLAIN LOGIN"}},
		{"implicit tls, require_tls", true, true, true, []string{"USER", "SASL PLAIN LOGIN"}, []string{"STLS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := withDemo(t, nil)
			e.mod = func(s *protocols.Session) {
				if !tt.tls {
					s.TLS = nil
				}
				s.TLSActive, s.RequireTLS = tt.active, tt.requireTLS
			}
			c, _ := e.connect()
			if g := c.line(); g != "+OK mailproxy ready." {
				t.Fatalf("greeting %q", g)
			}
			caps := c.capa()
			for _, w := range tt.want {
				if !slices.Contains(caps, w) {
					t.Errorf("CAPA %q lacks %q", caps, w)
				}
			}
			for _, n := range tt.not {
				if slices.Contains(caps, n) {
					t.Errorf("CAPA %q has %q", caps, n)
				}
			}
		})
	}
}

func TestLogins(t *testing.T) {
	tests := []struct {
		name   string
		dialog [][2]string // client line, expected reply prefix
	}{
		{"USER PASS", [][2]string{{"USER alice", "+OK"}, {"PASS pw", "+OK Logged in."}}},
		{"AUTH PLAIN initial response", [][2]string{{"AUTH PLAIN " + b64("\x00alice\x00pw"), "+OK Logged in."}}},
		{"AUTH PLAIN authzid = user", [][2]string{{"AUTH PLAIN " + b64("alice\x00alice\x00pw"), "+OK Logged in."}}},
		{"AUTH PLAIN continuation", [][2]string{{"AUTH PLAIN", "+ "}, {b64("\x00alice\x00pw"), "+OK Logged in."}}},
		{"AUTH LOGIN", [][2]string{{"AUTH LOGIN", "+ " + b64("Username:")}, {b64("alice"), "+ " + b64("Password:")}, {b64("pw"), "+OK Logged in."}}},
		{"AUTH LOGIN initial response", [][2]string{{"auth login " + b64("alice"), "+ " + b64("Password:")}, {b64("pw"), "+OK Logged in."}}},
		{"lower case", [][2]string{{"user alice", "+OK"}, {"pass pw", "+OK Logged in."}}},
		{"retry after wrong password", [][2]string{{"USER alice", "+OK"}, {"PASS nope", "-ERR [AUTH] Authentication failed."}, {"PASS pw", "-ERR USER first."}, {"USER alice", "+OK"}, {"PASS pw", "+OK Logged in."}}},
		{"cancel then log in", [][2]string{{"AUTH PLAIN", "+ "}, {"*", "-ERR Authentication cancelled."}, {"AUTH PLAIN " + b64("\x00alice\x00pw"), "+OK Logged in."}}},
	}
	for _, sasl := range []bool{true, false} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/backend sasl %v", tt.name, sasl), func(t *testing.T) {
				e, _ := withDemo(t, func(s *demo.POP3Server) { s.SASL = sasl })
				c, done := e.connect()
				c.expect("+OK")
				for _, d := range tt.dialog {
					if got := c.cmd(d[0]); !strings.HasPrefix(got, d[1]) {
						t.Fatalf("%q: got %q, want %q", d[0], got, d[1])
					}
				}
				if got := c.cmd("STAT"); got != fmt.Sprintf("+OK 1 %d", len(msg1)) {
					t.Fatalf("STAT after login: %q", got)
				}
				c.cmd("QUIT")
				if r := wait(t, done); !r.relay || r.err != nil {
					t.Fatalf("Serve: %+v", r)
				}
			})
		}
	}
}

// The backend method follows the backend's CAPA: AUTH PLAIN when it lists
// SASL PLAIN, USER/PASS otherwise (also when CAPA is unknown).
func TestBackendLoginMethod(t *testing.T) {
	tests := []struct {
		name string
		capa string
		want []string
	}{
		{"sasl plain", "+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n", []string{"CAPA", "AUTH PLAIN " + b64("\x00bob\x00a b")}},
		{"sasl login only", "+OK\r\nUSER\r\nSASL LOGIN\r\n.\r\n", []string{"CAPA", "USER bob", "PASS a b"}},
		{"no capa", "-ERR Unknown command.\r\n", []string{"CAPA", "USER bob", "PASS a b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, addr := scriptedBackend(t, "+OK hi", func(l string) string {
				if l == "CAPA" {
					return tt.capa
				}
				return "+OK welcome\r\n"
			})
			e := newEnv(t, addr)
			c, _ := e.connect()
			c.expect("+OK mailproxy")
			c.cmd("USER bob")
			if got := c.cmd("PASS a b"); got != "+OK welcome" {
				t.Fatalf("PASS: %q", got)
			}
			c.send("NOOP\r\n")
			c.expect("+OK welcome")
			if got := sc.Lines(); !slices.Equal(got[:len(tt.want)], tt.want) {
				t.Fatalf("backend got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBackendAsksForPlainResponse(t *testing.T) {
	sc, addr := scriptedBackend(t, "+OK hi", func(l string) string {
		switch {
		case l == "CAPA":
			return "+OK\r\nSASL PLAIN\r\n.\r\n"
		case strings.HasPrefix(l, "AUTH PLAIN"):
			return "+ \r\n"
		}
		return "+OK in\r\n"
	})
	c, _ := newEnv(t, addr).connect()
	c.line()
	c.cmd("USER bob")
	if got := c.cmd("PASS x"); got != "+OK in" {
		t.Fatalf("PASS: %q", got)
	}
	if l := sc.Lines(); len(l) != 3 || l[2] != b64("\x00bob\x00x") {
		t.Fatalf("backend got %q", l)
	}
}

func TestBackendRejectionRelayed(t *testing.T) {
	e, srv := withDemo(t, nil)
	srv.RejectLogins.Store(true)
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != "-ERR [SYS/PERM] Logins are disabled on fake." {
		t.Fatalf("got %q", got)
	}
}

func TestRequireTLS(t *testing.T) {
	e, _ := withDemo(t, nil)
	e.mod = func(s *protocols.Session) { s.RequireTLS = true }
	c, _ := e.connect()
	c.line()
	for _, cmd := range []string{"USER alice", "PASS pw", "AUTH PLAIN " + b64("\x00alice\x00pw"), "AUTH", "APOP alice 0123"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR") {
			t.Fatalf("%q before STLS: %q", cmd, got)
		}
	}
	if e.dials.Load() != 0 {
		t.Fatal("a backend was dialled before TLS")
	}
	c.send("STLS\r\n")
	c.expect("+OK Begin TLS")
	c.upgrade()
	if caps := c.capa(); slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") {
		t.Fatalf("CAPA after STLS: %q", caps)
	}
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != "+OK Logged in." {
		t.Fatalf("PASS after STLS: %q", got)
	}
}

// STLS injection (CVE-2011-0411 class): a command pipelined behind STLS in
// the same write must not run after the handshake.
func TestSTLSInjection(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, _ := e.connect()
	c.line()
	c.send("STLS\r\nUSER alice\r\n")
	c.expect("+OK Begin TLS")
	c.upgrade()
	if got := c.cmd("PASS pw"); got != "-ERR USER first." {
		t.Fatalf("PASS after injected USER: %q", got)
	}
	if got := c.cmd("STLS"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("second STLS: %q", got)
	}
}

func TestUSERForgottenAfterSTLS(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	c.cmd("STLS")
	c.upgrade()
	if got := c.cmd("PASS pw"); got != "-ERR USER first." {
		t.Fatalf("PASS: %q", got)
	}
}

func TestAuthErrors(t *testing.T) {
	tests := [][2]string{
		{"AUTH", "+OK"},
		{"AUTH CRAM-MD5", "-ERR Unsupported authentication mechanism."},
		{"AUTH PLAIN !!!", "-ERR Invalid base64 initial response."},
		{"AUTH PLAIN " + b64("no-nul"), "-ERR [AUTH] Authentication failed."},
		{"AUTH PLAIN " + b64("\x00\x00pw"), "-ERR [AUTH] Authentication failed."},
		{"AUTH PLAIN =", "-ERR [AUTH] Authentication failed."},
		{"PASS pw", "-ERR USER first."},
		{"USER", "-ERR USER needs a user name."},
		{"APOP alice 0123", "-ERR APOP not available."},
		{"STAT", "-ERR Log in first."},
		{"XYZZY", "-ERR Unknown command."},
		{"", "-ERR Empty command."},
		{"US\x01ER x", "-ERR Invalid characters in command."},
	}
	e, _ := withDemo(t, nil)
	for _, tt := range tests {
		c, _ := e.connect()
		c.line()
		if got := c.cmd(tt[0]); got != tt[1] {
			t.Errorf("%q: got %q, want %q", tt[0], got, tt[1])
		}
		if tt[0] == "AUTH" {
			if got := c.multi(); !slices.Equal(got, []string{"PLAIN", "LOGIN"}) {
				t.Errorf("AUTH list: %q", got)
			}
		}
	}
	c, _ := e.connect()
	c.line()
	c.cmd("AUTH PLAIN")
	if got := c.cmd("%%%"); got != "-ERR Invalid base64 response." {
		t.Errorf("bad base64 response: %q", got)
	}
	if e.dials.Load() != 0 {
		t.Errorf("%d backend dials for failed logins", e.dials.Load())
	}
}

// Credentials that would end a backend command line early are refused
// before any backend sees them.
func TestControlCharactersInSASLCredentials(t *testing.T) {
	sc, addr := scriptedBackend(t, "+OK hi", func(string) string { return "+OK\r\n" })
	e := newEnv(t, addr)
	c, _ := e.connect()
	c.line()
	for _, creds := range []string{"\x00bob\x00pw\r\nDELE 1", "\x00bob\r\nDELE 1\x00pw", "x\ny\x00bob\x00pw"} {
		if got := c.cmd("AUTH PLAIN " + b64(creds)); got != "-ERR [AUTH] Authentication failed." {
			t.Fatalf("%q: %q", creds, got)
		}
	}
	if e.dials.Load() != 0 || len(sc.Lines()) != 0 {
		t.Fatalf("a backend was dialled (%d) and got %q", e.dials.Load(), sc.Lines())
	}
}

func TestTooManyErrors(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, done := e.connect()
	c.line()
	for i := 1; i < maxErrors; i++ {
		if got := c.cmd("BOGUS"); got != "-ERR Unknown command." {
			t.Fatalf("error %d: %q", i, got)
		}
	}
	if got := c.cmd("BOGUS"); got != "-ERR Too many errors, closing connection." {
		t.Fatalf("last error: %q", got)
	}
	c.closed()
	if r := wait(t, done); !errors.Is(r.err, errTooManyErrors) {
		t.Fatalf("Serve: %v", r.err)
	}
}

func TestFailedLoginsCount(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, done := e.connect()
	c.line()
	for range maxErrors {
		if got := c.cmd("AUTH PLAIN " + b64("\x00alice\x00wrong")); got != "-ERR [AUTH] Authentication failed." {
			t.Fatalf("got %q", got)
		}
	}
	c.closed()
	if r := wait(t, done); !errors.Is(r.err, errTooManyErrors) {
		t.Fatalf("Serve: %v", r.err)
	}
}

func TestLineTooLong(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, _ := e.connect()
	c.line()
	if got := c.cmd("USER " + strings.Repeat("a", 2000)); got != "-ERR Line too long." {
		t.Fatalf("long line: %q", got)
	}
	c.cmd("AUTH PLAIN")
	if got := c.cmd(strings.Repeat("A", 2000)); got != "-ERR Response too long." {
		t.Fatalf("long SASL response: %q", got)
	}
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != "+OK Logged in." {
		t.Fatalf("login after long lines: %q", got)
	}
}

func TestNoBackend(t *testing.T) {
	e, _ := withDemo(t, nil)
	e.dialErr = errors.New("pick backend: no backend available")
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != replyUnavailable {
		t.Fatalf("got %q", got)
	}
	if got := c.cmd("CAPA"); got != "+OK Capability list follows" {
		t.Fatalf("session should go on: %q", got)
	}
}

func TestBackendMisbehaves(t *testing.T) {
	tests := []struct {
		name   string
		answer func(string) string
	}{
		{"garbage reply to PASS", func(l string) string {
			switch {
			case l == "CAPA":
				return "-ERR\r\n"
			case strings.HasPrefix(l, "PASS"):
				return "what?\r\n"
			}
			return "+OK\r\n"
		}},
		{"closes at PASS", func(l string) string {
			switch {
			case l == "CAPA":
				return "-ERR\r\n"
			case strings.HasPrefix(l, "PASS"):
				return ""
			}
			return "+OK\r\n"
		}},
		{"endless CAPA", func(l string) string { return "+OK\r\n" + strings.Repeat("X\r\n", 300) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := scriptedBackend(t, "+OK hi", tt.answer)
			e := newEnv(t, addr)
			c, _ := e.connect()
			c.line()
			c.cmd("USER bob")
			if got := c.cmd("PASS pw"); got != replyUnavailable {
				t.Fatalf("got %q", got)
			}
			if e.fails.Load() != 1 {
				t.Fatalf("backend charged %d failures, want 1", e.fails.Load())
			}
		})
	}
}

func TestBadGreeting(t *testing.T) {
	for _, g := range []string{"-ERR [SYS/TEMP] too busy", "* OK IMAP here", ""} {
		_, addr := scriptedBackend(t, g, func(string) string { return "" })
		e := newEnv(t, addr)
		c, _ := e.connect()
		c.line()
		c.cmd("USER bob")
		if got := c.cmd("PASS pw"); got != replyUnavailable {
			t.Fatalf("greeting %q: got %q", g, got)
		}
	}
}

// Commands pipelined behind PASS reach the backend after login.
func TestPipelinedAfterLogin(t *testing.T) {
	e, _ := withDemo(t, nil)
	c, _ := e.connect()
	c.line()
	c.send("USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n")
	for _, want := range []string{"+OK", "+OK Logged in.", fmt.Sprintf("+OK 1 %d", len(msg1)), "+OK Logging out."} {
		if got := c.line(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	c.closed()
}

func TestBackendSTLS(t *testing.T) {
	e, srv := withDemo(t, func(s *demo.POP3Server) { s.TLSConfig = serverTLS() })
	e.mkBack = func(b *protocols.Backend) { b.StartTLS, b.TLS = true, clientTLS() }
	c, _ := e.connect()
	c.line()
	if got := c.cmd("AUTH PLAIN " + b64("\x00alice\x00pw")); got != "+OK Logged in." {
		t.Fatalf("got %q", got)
	}
	// After STLS the backend's CAPA no longer lists STLS.
	if caps := c.capa(); slices.Contains(caps, "STLS") {
		t.Fatalf("post-login CAPA: %q", caps)
	}
	if srv.Logins() != 1 {
		t.Fatal("no login on the backend")
	}
}

func TestForwardClient(t *testing.T) {
	tests := []struct {
		name     string
		greeting string
		capa     string
		forward  bool
		want     bool
	}{
		{"dovecot greeting code", "+OK [XCLIENT] Dovecot ready.", "+OK\r\nUSER\r\n.\r\n", true, true},
		{"capa lists it", "+OK ready.", "+OK\r\nXCLIENT\r\nUSER\r\n.\r\n", true, true},
		{"not offered", "+OK ready.", "+OK\r\nUSER\r\n.\r\n", true, false},
		{"forward_client off", "+OK [XCLIENT] Dovecot ready.", "+OK\r\nUSER\r\n.\r\n", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, addr := scriptedBackend(t, tt.greeting, func(l string) string {
				if l == "CAPA" {
					return tt.capa
				}
				return "+OK\r\n"
			})
			e := newEnv(t, addr)
			e.mkBack = func(b *protocols.Backend) { b.ForwardClient = tt.forward }
			c, _ := e.connect()
			c.line()
			c.cmd("USER bob")
			c.cmd("PASS pw")
			c.cmd("NOOP")
			lines := sc.Lines()
			xclient := regexp.MustCompile(`^XCLIENT ADDR=127\.0\.0\.1 PORT=\d+( SESSION=\w+)?$`)
			got := slices.ContainsFunc(lines, xclient.MatchString)
			if got != tt.want {
				t.Fatalf("XCLIENT sent = %v, want %v: %q", got, tt.want, lines)
			}
			if tt.want && lines[1] != lines[slices.IndexFunc(lines, xclient.MatchString)] {
				t.Fatalf("XCLIENT must come right after CAPA, before the login: %q", lines)
			}
		})
	}
}

func TestForwardClientDemo(t *testing.T) {
	e, srv := withDemo(t, func(s *demo.POP3Server) { s.XCLIENT = true })
	e.mkBack = func(b *protocols.Backend) { b.ForwardClient = true }
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	if got := c.cmd("PASS pw"); got != "+OK Logged in." {
		t.Fatalf("got %q", got)
	}
	if f := srv.Forwarded(); !slices.Equal(f, []string{"127.0.0.1"}) {
		t.Fatalf("forwarded %q", f)
	}
}

var stampRE = regexp.MustCompile(`<[^<>@]+@[^<>]+>`)

func apopDigest(greeting, password string) string {
	sum := md5.Sum([]byte(stampRE.FindString(greeting) + password))
	return hex.EncodeToString(sum[:])
}

func TestAPOP(t *testing.T) {
	e, srv := withDemo(t, nil)
	e.mod = func(s *protocols.Session) { s.APOP = true }
	c, done := e.connect()
	g := c.line()
	if !strings.HasPrefix(g, "+OK fake ready. <") || !stampRE.MatchString(g) {
		t.Fatalf("greeting %q is not the backend's", g)
	}
	if got := c.cmd("APOP alice " + apopDigest(g, "wrong")); got != "-ERR [AUTH] Authentication failed." {
		t.Fatalf("wrong digest: %q", got)
	}
	if got := c.cmd("APOP alice"); got != "-ERR APOP needs a user name and a digest." {
		t.Fatalf("short APOP: %q", got)
	}
	if got := c.cmd("APOP alice " + apopDigest(g, "pw")); got != "+OK Logged in." {
		t.Fatalf("APOP: %q", got)
	}
	if got := c.cmd("STAT"); got != fmt.Sprintf("+OK 1 %d", len(msg1)) {
		t.Fatalf("STAT: %q", got)
	}
	c.cmd("QUIT")
	wait(t, done)
	if e.dials.Load() != 1 || srv.Logins() != 1 {
		t.Fatalf("dials %d logins %d, want 1 and 1", e.dials.Load(), srv.Logins())
	}
}

// On an APOP listener USER/PASS and AUTH go to the backend picked at
// connect, and a rejection leaves it usable for another try.
func TestAPOPListenerOtherLogins(t *testing.T) {
	e, srv := withDemo(t, nil)
	e.mod = func(s *protocols.Session) { s.APOP = true }
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	if got := c.cmd("PASS nope"); got != "-ERR [AUTH] Authentication failed." {
		t.Fatalf("got %q", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64("\x00alice\x00pw")); got != "+OK Logged in." {
		t.Fatalf("got %q", got)
	}
	if e.dials.Load() != 1 || srv.Logins() != 1 {
		t.Fatalf("dials %d logins %d, want 1 and 1", e.dials.Load(), srv.Logins())
	}
}

func TestAPOPNoBackend(t *testing.T) {
	e, _ := withDemo(t, nil)
	e.mod = func(s *protocols.Session) { s.APOP = true }
	e.dialErr = errors.New("no backend available")
	c, done := e.connect()
	if got := c.line(); got != replyUnavailable {
		t.Fatalf("greeting: %q", got)
	}
	c.closed()
	if r := wait(t, done); r.err == nil {
		t.Fatal("Serve returned no error")
	}
}

// A QUIT before login on an APOP listener quits the backend too.
func TestAPOPQuit(t *testing.T) {
	sc, addr := scriptedBackend(t, "+OK hi <1.2@b>", func(l string) string {
		if l == "CAPA" {
			return "+OK\r\n.\r\n"
		}
		return "+OK\r\n"
	})
	e := newEnv(t, addr)
	e.mod = func(s *protocols.Session) { s.APOP = true }
	c, done := e.connect()
	c.expect("+OK hi <1.2@b>")
	c.cmd("QUIT")
	c.closed()
	if r := wait(t, done); r.err != nil || r.relay {
		t.Fatalf("Serve: %+v", r)
	}
	waitFor(t, "the backend to see QUIT", func() bool { return slices.Equal(sc.Lines(), []string{"CAPA", "QUIT"}) })
}

func TestPasswordNotLogged(t *testing.T) {
	const pw = "Sup3r-Secr3t"
	_, addr := demoBackend(t, map[string]string{"alice": pw}, nil)
	e := newEnv(t, addr)
	c, _ := e.connect()
	c.line()
	c.cmd("USER alice")
	c.cmd("PASS wrong-" + pw)
	c.cmd("AUTH PLAIN " + b64("\x00alice\x00x"+pw))
	c.cmd("AUTH LOGIN")
	c.cmd(b64("alice"))
	c.cmd(b64("y" + pw))
	c.cmd("AUTH PLAIN " + b64("\x00alice\x00"+pw))
	c.cmd("QUIT")
	logs := e.logs.String()
	if !strings.Contains(logs, "alice") {
		t.Fatalf("logs do not name the user:\n%s", logs)
	}
	for _, secret := range []string{pw, b64(pw), b64("\x00alice\x00" + pw)} {
		if strings.Contains(logs, secret) {
			t.Fatalf("logs contain %q:\n%s", secret, logs)
		}
	}
}

func TestProbe(t *testing.T) {
	_, good := demoBackend(t, nil, nil)
	_, bad := scriptedBackend(t, "-ERR go away", func(string) string { return "" })
	_, imap := scriptedBackend(t, "* OK IMAP4rev1", func(string) string { return "" })
	for addr, wantErr := range map[string]bool{good: false, bad: true, imap: true} {
		c, err := netDial(addr)
		if err != nil {
			t.Fatal(err)
		}
		err = Handler{}.Probe(t.Context(), c)
		c.Close()
		if (err != nil) != wantErr {
			t.Errorf("%s: Probe = %v, want error %v", addr, err, wantErr)
		}
	}
}
