package integration

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
)

// [auth] mode = "verify" and backend_login = "master": mailproxy checks
// passwords against a users file before any backend hears of the login,
// and can log in to the backends as a master user on the user's behalf.

// authUsers is the users file of these tests: alice's password is
// "clientpw" (a bcrypt, cost 4, made with `doveadm pw -s BLF-CRYPT -r 4`),
// bob's "bobpw". The backends know other passwords for them, so a login
// that works in master mode cannot have used the client's password.
const authUsers = "# mailproxy users\n" +
	"alice:{BLF-CRYPT}$2y$04$8cWrRnFOfDS1plL/VrMwoejpMCzy/w3JeafvoCUHIuH77mDkb0A4K::::::\n" +
	"bob:{PLAIN}bobpw\n"

// authSecrets are strings that must never reach a log.
var authSecrets = []string{"clientpw", "wrongpw", "proxypw", "bobpw", "backendpw"}

// authConfig writes the users file (and the master password file when
// master) and returns a config with an IMAP, a POP3 and an SMTP listener
// (smtp_auth optional) in front of one backend with these addresses.
func authConfig(t *testing.T, master bool, delay, imapAddr, pop3Addr, smtpAddr string) string {
	t.Helper()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.passwd")
	if err := os.WriteFile(users, []byte(authUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	authTOML := fmt.Sprintf("[auth]\nmode = \"verify\"\nusers_file = %q\n", users)
	if master {
		secret := filepath.Join(dir, "master.secret")
		if err := os.WriteFile(secret, []byte("proxypw\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		authTOML += fmt.Sprintf("backend_login = \"master\"\nmaster_user = \"proxy\"\nmaster_password_file = %q\n", secret)
	}
	return fmt.Sprintf(`[limits]
auth_failure_delay = %q
%s
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"

[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:2"
pool = "main"

[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:3"
pool = "main"
smtp_auth = "optional"

[[pool]]
name = "main"
  [pool.health]
  interval = "1h"
  [[pool.backend]]
  name = "mail1"
  imap = %q
  pop3 = %q
  smtp = %q
`, delay, authTOML, imapAddr, pop3Addr, smtpAddr)
}

// recorder is a backend's listener that keeps everything each connection
// sent to the backend.
type recorder struct {
	net.Listener
	mu   sync.Mutex
	sent []*testkit.SyncBuffer
}

// serveRecorded runs srv behind a recorder on 127.0.0.1:0 until the test
// ends.
func serveRecorded(t *testing.T, srv testkit.Server) (*recorder, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{Listener: ln}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(r) }()
	t.Cleanup(func() { srv.Close(); ln.Close(); <-done })
	return r, ln.Addr().String()
}

func (r *recorder) Accept() (net.Conn, error) {
	c, err := r.Listener.Accept()
	if err != nil {
		return nil, err
	}
	buf := &testkit.SyncBuffer{}
	r.mu.Lock()
	r.sent = append(r.sent, buf)
	r.mu.Unlock()
	return &teeConn{Conn: c, sent: buf}, nil
}

// received is everything the backend was sent, on any connection.
func (r *recorder) received() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, s := range r.sent {
		b.WriteString(s.String())
	}
	return b.String()
}

// masterIMAP is a scripted IMAP backend with Dovecot's master users:
// AUTHENTICATE PLAIN with authzid = a user, authcid = the master user and
// the master's password logs in as that user; users log in as themselves
// with their own passwords (AUTHENTICATE PLAIN or LOGIN). A master login's
// user is looked up in lower case, as Dovecot's auth_username_format = %Lu
// does. With noPlain it offers no AUTH=PLAIN, only LOGIN.
type masterIMAP struct {
	users            map[string]string
	master, masterPW string
	noPlain          bool

	testkit.ConnServer
	mu     sync.Mutex
	logins []string // "authzid=X authcid=Y" of each login it accepted
}

func (s *masterIMAP) accepted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.logins...)
}

func (s *masterIMAP) caps() string {
	if s.noPlain {
		return "IMAP4rev1 ID"
	}
	return "IMAP4rev1 SASL-IR AUTH=PLAIN ID"
}

func (s *masterIMAP) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "* OK [CAPABILITY %s] masterimap ready\r\n", s.caps())
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		tag, verb := f[0], strings.ToUpper(f[1])
		switch {
		case verb == "LOGOUT":
			io.WriteString(c, "* BYE Logging out\r\n"+tag+" OK Logout completed\r\n")
			return
		case verb == "CAPABILITY":
			fmt.Fprintf(c, "* CAPABILITY %s\r\n%s OK done\r\n", s.caps(), tag)
		case verb == "AUTHENTICATE" && !s.noPlain && len(f) >= 3 && strings.EqualFold(f[2], "PLAIN"):
			ir := ""
			if len(f) == 4 {
				ir = f[3]
			} else {
				io.WriteString(c, "+ \r\n")
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				ir = strings.TrimSpace(l)
			}
			raw, _ := base64.StdEncoding.DecodeString(ir)
			p := strings.Split(string(raw), "\x00")
			s.reply(c, tag, len(p) == 3 && s.check(p[0], p[1], p[2]))
		case verb == "LOGIN" && len(f) == 4:
			s.reply(c, tag, s.check("", strings.Trim(f[2], `"`), strings.Trim(f[3], `"`)))
		default:
			io.WriteString(c, tag+" OK done\r\n")
		}
	}
}

// check accepts a user's own password, or the master's for authzid.
func (s *masterIMAP) check(authzid, authcid, pw string) bool {
	var ok bool
	if authzid != "" && authzid != authcid {
		_, exists := s.users[strings.ToLower(authzid)] // as Dovecot's %Lu
		ok = exists && authcid == s.master && pw == s.masterPW
	} else {
		want, exists := s.users[authcid]
		ok = exists && pw == want
	}
	if ok {
		s.mu.Lock()
		s.logins = append(s.logins, fmt.Sprintf("authzid=%s authcid=%s", authzid, authcid))
		s.mu.Unlock()
	}
	return ok
}

func (s *masterIMAP) reply(c net.Conn, tag string, ok bool) {
	if ok {
		io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1 ID] Logged in\r\n")
		return
	}
	io.WriteString(c, tag+" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
}

// authBackends are one backend of each protocol, every one recorded.
type authBackends struct {
	imap               *masterIMAP
	pop3               *demo.POP3Server
	smtp               *demo.SMTPServer
	imapRec, pop3Rec   *recorder
	smtpRec            *recorder
	imapAddr, pop3Addr string
	smtpAddr           string
	tracker            *demo.Tracker
}

// startAuthBackends starts the backends. users are their own passwords;
// each also knows the master user proxy/proxypw.
func startAuthBackends(t *testing.T, users map[string]string, noPlain bool) *authBackends {
	b := &authBackends{tracker: demo.NewTracker()}
	b.imap = &masterIMAP{users: users, master: "proxy", masterPW: "proxypw", noPlain: noPlain}
	b.imap.Handle = b.imap.serve
	b.imapRec, b.imapAddr = serveRecorded(t, b.imap)
	b.pop3 = demo.NewPOP3Server("mail1", users, nil)
	b.pop3.Masters, b.pop3.Tracker, b.pop3.SASL = map[string]string{"proxy": "proxypw"}, b.tracker, !noPlain
	b.pop3Rec, b.pop3Addr = serveRecorded(t, b.pop3)
	b.smtp = demo.NewSMTPServer("mail1", demo.SMTPOptions{Users: users, Masters: map[string]string{"proxy": "proxypw"}})
	b.smtpRec, b.smtpAddr = serveRecorded(t, b.smtp)
	return b
}

// checkNoSecrets fails the test if a password is in the proxy's log.
func checkNoSecrets(t *testing.T, e *env) {
	t.Helper()
	logs := e.Logs.String()
	for _, s := range authSecrets {
		if strings.Contains(logs, s) {
			t.Errorf("password %q is in the log:\n%s", s, logs)
		}
	}
}

// failedLogins reads mailproxy_logins_total{result="failed"} of listener.
func failedLogins(e *env, listener string) string {
	rec := httptest.NewRecorder()
	e.Srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, fmt.Sprintf(`mailproxy_logins_total{listener=%q,`, listener)) && strings.Contains(l, `result="failed"`) {
			return l[strings.LastIndex(l, " ")+1:]
		}
	}
	return "0"
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestAuthVerifyRefusesWithoutBackend: in verify mode a wrong password or
// an unknown user gets the protocol's failed-login reply, after the
// failure delay, while the backend hears nothing of the login; the
// failure is counted; the right password then logs in (user mode: with
// the client's own credentials).
func TestAuthVerifyRefusesWithoutBackend(t *testing.T) {
	const delay = 150 * time.Millisecond
	// The backends know alice with the same password: user mode.
	b := startAuthBackends(t, map[string]string{"alice": "clientpw"}, false)
	e := startProxy(t, authConfig(t, false, delay.String(), b.imapAddr, b.pop3Addr, b.smtpAddr))
	loginVerbs := []string{"LOGIN", "AUTHENTICATE", "USER", "PASS", "AUTH"}
	noLogin := func(t *testing.T, r *recorder) {
		t.Helper()
		got := strings.ToUpper(r.received())
		for _, v := range loginVerbs {
			if strings.Contains(got, " "+v+" ") || strings.Contains(got, "\n"+v+" ") || strings.HasPrefix(got, v+" ") {
				t.Errorf("the backend got %s before the password was right:\n%s", v, r.received())
			}
		}
	}
	refused := func(t *testing.T, start time.Time) {
		t.Helper()
		if d := time.Since(start); d < delay {
			t.Errorf("refused after %v, before the failure delay of %v", d, delay)
		}
	}

	t.Run("imap", func(t *testing.T) {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		start := time.Now()
		s.send("a LOGIN alice wrongpw\r\n")
		s.expect("a NO [AUTHENTICATIONFAILED]")
		refused(t, start)
		s.send("b AUTHENTICATE PLAIN " + b64("\x00mallory\x00wrongpw") + "\r\n")
		s.expect("b NO [AUTHENTICATIONFAILED]")
		s.send("c AUTHENTICATE PLAIN " + b64("bob\x00alice\x00clientpw") + "\r\n") // alice acting as bob
		s.expect("c NO [AUTHENTICATIONFAILED]")
		noLogin(t, b.imapRec)
		s.send("d LOGIN alice clientpw\r\n")
		s.expect("d OK")
		s.send("e LOGOUT\r\n")
		s.expect("* BYE")
		if got := b.imap.accepted(); len(got) != 1 || got[0] != "authzid= authcid=alice" {
			t.Errorf("backend logins %q, want alice's own", got)
		}
	})
	t.Run("pop3", func(t *testing.T) {
		s := dialScript(t, e.Addr["pop3"])
		s.expect("+OK")
		start := time.Now()
		s.send("USER alice\r\nPASS wrongpw\r\n")
		s.expect("+OK")
		s.expect("-ERR [AUTH] Authentication failed.")
		refused(t, start)
		s.send("AUTH PLAIN " + b64("\x00mallory\x00wrongpw") + "\r\n")
		s.expect("-ERR [AUTH] Authentication failed.")
		noLogin(t, b.pop3Rec)
		s.send("USER alice\r\nPASS clientpw\r\n")
		s.expect("+OK")
		s.expect("+OK Logged in.")
		s.send("QUIT\r\n")
		s.expect("+OK")
		if got := b.tracker.Splits(); len(got) != 0 {
			t.Errorf("splits: %q", got)
		}
	})
	t.Run("smtp", func(t *testing.T) {
		c := dialSMTP(t, e, "smtp")
		start := time.Now()
		err := c.Auth(sasl.NewPlainClient("", "alice", "wrongpw"))
		if code, ec, _ := smtpCode(err); code != 535 || ec != [3]int{5, 7, 8} {
			t.Fatalf("wrong password: %v, want 535 5.7.8", err)
		}
		refused(t, start)
		noLogin(t, b.smtpRec)
		if err := c.Auth(sasl.NewPlainClient("", "alice", "clientpw")); err != nil {
			t.Fatalf("right password: %v", err)
		}
		if _, err := sendSMTP(c, "alice@example.org", nil, []string{"x@example.org"}, nil, testMessage); err != nil {
			t.Fatal(err)
		}
		c.Quit()
		if m := b.smtp.Messages(); len(m) != 1 || m[0].User != "alice" {
			t.Errorf("backend messages %+v, want one from alice", m)
		}
	})
	// Each listener's session that never logged in counts as failed; the
	// sessions above logged in in the end, so count one more each.
	for _, l := range []string{"imap", "pop3"} {
		s := dialScript(t, e.Addr[l])
		s.expect("")
		if l == "imap" {
			s.send("a LOGIN bob wrongpw\r\nb LOGOUT\r\n")
		} else {
			s.send("USER bob\r\nPASS wrongpw\r\nQUIT\r\n")
		}
		s.expectClosed()
		waitFor(t, 5*time.Second, l+" failed login counted", func() bool { return failedLogins(e, l) == "1" })
	}
	if logs := e.Logs.String(); !strings.Contains(logs, "refused by mailproxy") || !strings.Contains(logs, "wrong password") || !strings.Contains(logs, "unknown user") {
		t.Errorf("the log does not say why logins were refused:\n%s", logs)
	}
	checkNoSecrets(t, e)
}

// TestAuthMasterIMAP: with backend_login = "master" the backend sees the
// master user with authzid = the client's user, and the client sees its
// own login succeed, though the backend would refuse its password.
func TestAuthMasterIMAP(t *testing.T) {
	b := startAuthBackends(t, map[string]string{"alice": "backendpw", "bob": "backendpw"}, false)
	e := startProxy(t, authConfig(t, true, "0s", b.imapAddr, b.pop3Addr, b.smtpAddr))
	for i, login := range []string{
		"LOGIN alice clientpw",
		"AUTHENTICATE PLAIN " + b64("\x00alice\x00clientpw"),
		"AUTHENTICATE PLAIN " + b64("alice\x00alice\x00clientpw"),
		"LOGIN Bob bobpw", // users are matched by routing key
	} {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a " + login + "\r\n")
		s.expect("a OK [CAPABILITY IMAP4rev1 ID] Logged in")
		s.send("b NOOP\r\nc LOGOUT\r\n")
		s.expect("b OK")
		s.expect("* BYE")
		s.expect("c OK")
		want := "authzid=alice authcid=proxy"
		if i == 3 {
			want = "authzid=Bob authcid=proxy"
		}
		if got := b.imap.accepted(); len(got) != i+1 || got[i] != want {
			t.Fatalf("after %q the backend accepted %q, want %q last", login, got, want)
		}
	}
	// The master password is not a user's, and no client may name another
	// authorisation identity.
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a LOGIN proxy proxypw\r\n")
	s.expect("a NO [AUTHENTICATIONFAILED]")
	s.send("b AUTHENTICATE PLAIN " + b64("alice\x00bob\x00bobpw") + "\r\n")
	s.expect("b NO [AUTHENTICATIONFAILED]")
	s.send("c LOGOUT\r\n")
	s.expect("* BYE")
	if got := b.imap.accepted(); len(got) != 4 {
		t.Errorf("backend logins %q, want no more", got)
	}
	checkNoSecrets(t, e)
}

// TestAuthMasterNoPlain: a backend without SASL PLAIN cannot carry an
// authzid; the login fails clearly instead of falling back to LOGIN or
// USER/PASS, and the backend is not taken down for it.
func TestAuthMasterNoPlain(t *testing.T) {
	b := startAuthBackends(t, map[string]string{"alice": "backendpw"}, true)
	e := startProxy(t, authConfig(t, true, "0s", b.imapAddr, b.pop3Addr, b.smtpAddr))

	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a LOGIN alice clientpw\r\n")
	s.expect("a NO [UNAVAILABLE]")
	s.send("b LOGOUT\r\n")
	s.expect("* BYE")

	p := dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("USER alice\r\nPASS clientpw\r\n")
	p.expect("+OK")
	p.expect("-ERR [SYS/TEMP]")
	p.send("QUIT\r\n")
	p.expect("+OK")

	for _, r := range []*recorder{b.imapRec, b.pop3Rec} {
		if got := r.received(); strings.Contains(got, "LOGIN") || strings.Contains(got, "USER") || strings.Contains(got, "PASS") {
			t.Errorf("the backend got a login that cannot carry the authzid:\n%s", got)
		}
	}
	logs := e.Logs.String()
	for _, want := range []string{"has no AUTH=PLAIN", "has no SASL PLAIN"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not say %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "backend down") {
		t.Errorf("a setting took the backend down:\n%s", logs)
	}
	checkNoSecrets(t, e)
}

// TestAuthMasterPOP3AndSMTP: POP3 (AUTH PLAIN) and SMTP (AUTH PLAIN) log in
// as the master user on the user's behalf too.
func TestAuthMasterPOP3AndSMTP(t *testing.T) {
	b := startAuthBackends(t, map[string]string{"alice": "backendpw"}, false)
	e := startProxy(t, authConfig(t, true, "0s", b.imapAddr, b.pop3Addr, b.smtpAddr))

	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK")
	s.send("USER alice\r\nPASS clientpw\r\n")
	s.expect("+OK")
	s.expect("+OK Logged in.")
	if got := b.tracker.Sessions("alice"); got["mail1"] != 1 {
		t.Errorf("alice's sessions on the backend: %v", got)
	}
	s.send("STAT\r\nQUIT\r\n")
	s.expect("+OK 0 0")
	s.expect("+OK")
	if got := b.pop3Rec.received(); !strings.Contains(got, "AUTH PLAIN "+b64("alice\x00proxy\x00proxypw")) {
		t.Errorf("the POP3 backend did not get the master login:\n%s", got)
	}

	c := dialSMTP(t, e, "smtp")
	if err := c.Auth(sasl.NewPlainClient("", "alice", "clientpw")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	if _, err := sendSMTP(c, "alice@example.org", nil, []string{"x@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	if m := b.smtp.Messages(); len(m) != 1 || m[0].User != "alice" {
		t.Errorf("SMTP backend messages %+v, want one sent as alice", m)
	}
	if got := b.smtpRec.received(); !strings.Contains(got, "AUTH PLAIN "+b64("alice\x00proxy\x00proxypw")) {
		t.Errorf("the SMTP backend did not get the master login:\n%s", got)
	}
	checkNoSecrets(t, e)
}

// TestAuthReload: a reload (SIGHUP) swaps a new users file in; a bad one
// is refused and the users loaded before stay in force.
func TestAuthReload(t *testing.T) {
	b := startAuthBackends(t, map[string]string{"alice": "backendpw"}, false)
	e := startProxy(t, authConfig(t, true, "0s", b.imapAddr, b.pop3Addr, b.smtpAddr))
	login := func(pw, want string) {
		t.Helper()
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a LOGIN alice " + pw + "\r\n")
		s.expect("a " + want)
		s.send("b LOGOUT\r\n")
		s.expect("* BYE")
	}
	users := e.Cfg.Auth.UsersFile
	login("clientpw", "OK")

	if err := os.WriteFile(users, []byte("alice:{PLAIN}newpw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Reload(e.Cfg); err != nil {
		t.Fatal(err)
	}
	login("clientpw", "NO")
	login("newpw", "OK")

	if err := os.WriteFile(users, []byte("alice:{PLAIN}newerpw\nbob:{MD4}x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Reload(e.Cfg); err == nil || !strings.Contains(err.Error(), "users.passwd:2:") {
		t.Errorf("a bad users file reloaded: %v", err)
	}
	login("newerpw", "NO")
	login("newpw", "OK")
}
