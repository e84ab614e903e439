package integration

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
)

// pop3Config is a pool "main" with the given backends (name, pop3 address
// pairs) behind three POP3 listeners: "pop3" (plain, STLS offered),
// "pop3s" (implicit TLS) and "pop3-tls-only" (require_tls). extra goes into
// the [[pool]] table before the backends; backendExtra into each backend.
func pop3Config(extra, backendExtra string, backends ...string) string {
	var b strings.Builder
	b.WriteString(`
[limits]
auth_failure_delay = "0s"

[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:1"
tls = "starttls"
pool = "main"

[[listener]]
name = "pop3s"
protocol = "pop3"
address = "127.0.0.1:2"
tls = "implicit"
pool = "main"

[[listener]]
name = "pop3-tls-only"
protocol = "pop3"
address = "127.0.0.1:3"
tls = "starttls"
require_tls = true
pool = "main"

[[pool]]
name = "main"
`)
	b.WriteString(extra)
	for i := 0; i+1 < len(backends); i += 2 {
		fmt.Fprintf(&b, "\n[[pool.backend]]\nname = %q\npop3 = %q\n%s\n", backends[i], backends[i+1], backendExtra)
	}
	return b.String()
}

// pop3Backend starts a demo POP3 backend called name with users on
// 127.0.0.1:0; opts (may be nil) adjusts it before it serves.
func pop3Backend(t *testing.T, name string, users map[string]string, opts func(*demo.POP3Server)) (*demo.POP3Server, string) {
	t.Helper()
	s := demo.NewPOP3Server(name, users, nil)
	if opts != nil {
		opts(s)
	}
	return s, testkit.Serve(t, s)
}

// pop3Client is a tiny POP3 client with a deadline on every read. Its
// methods return errors, so that it can run outside the test goroutine.
type pop3Client struct {
	conn     net.Conn
	r        *bufio.Reader
	Greeting string
}

const pop3Timeout = 5 * time.Second

// dialPOP3 connects and reads the greeting; with tlsCfg, over implicit TLS.
func dialPOP3(addr string, tlsCfg *tls.Config) (*pop3Client, error) {
	d := &net.Dialer{Timeout: pop3Timeout}
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tlsCfg)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	c := &pop3Client{conn: conn, r: bufio.NewReader(conn)}
	if c.Greeting, err = c.line(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *pop3Client) Close() error { return c.conn.Close() }

func (c *pop3Client) line() (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(pop3Timeout))
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(l, "\r\n") {
		return "", fmt.Errorf("line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n"), nil
}

func (c *pop3Client) send(raw string) error {
	c.conn.SetWriteDeadline(time.Now().Add(pop3Timeout))
	_, err := io.WriteString(c.conn, raw)
	return err
}

// cmd sends a command and returns the one-line reply.
func (c *pop3Client) cmd(line string) (string, error) {
	if err := c.send(line + "\r\n"); err != nil {
		return "", err
	}
	return c.line()
}

// ok sends a command that must succeed.
func (c *pop3Client) ok(line string) (string, error) {
	r, err := c.cmd(line)
	if err == nil && !strings.HasPrefix(r, "+OK") {
		err = fmt.Errorf("%s: %s", strings.Fields(line + " ")[0], r)
	}
	return r, err
}

// multi sends a command with a multi-line reply and returns the first line
// and, after +OK, the body with the dot-stuffing undone.
func (c *pop3Client) multi(line string) (string, []string, error) {
	first, err := c.cmd(line)
	if err != nil || !strings.HasPrefix(first, "+OK") {
		return first, nil, err
	}
	var body []string
	for {
		l, err := c.line()
		if err != nil {
			return first, body, err
		}
		if l == "." {
			return first, body, nil
		}
		body = append(body, strings.TrimPrefix(l, "."))
	}
}

func (c *pop3Client) login(user, password string) error {
	if _, err := c.ok("USER " + user); err != nil {
		return err
	}
	_, err := c.ok("PASS " + password)
	return err
}

// stls upgrades the connection with STLS.
func (c *pop3Client) stls(cfg *tls.Config) error {
	if _, err := c.ok("STLS"); err != nil {
		return err
	}
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(pop3Timeout))
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	return nil
}

// quit sends QUIT and waits until the server closes the connection.
func (c *pop3Client) quit() error {
	defer c.Close()
	if _, err := c.ok("QUIT"); err != nil {
		return err
	}
	c.conn.SetReadDeadline(time.Now().Add(pop3Timeout))
	if rest, err := io.ReadAll(c.r); err != nil || len(rest) > 0 {
		return fmt.Errorf("after QUIT: %q, %v", rest, err)
	}
	return nil
}

func (c *pop3Client) capa() ([]string, error) {
	_, caps, err := c.multi("CAPA")
	return caps, err
}

// The mailbox of the end-to-end test: a dot-stuffed line, an empty body
// line, and a message long enough for TOP to cut.
var pop3Mailbox = []string{
	"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n",
	"From: b@example.org\r\nSubject: two\r\n\r\nline 1\r\n\r\nline 3\r\nline 4\r\n",
	"From: c@example.org\r\nSubject: three\r\n\r\n.\r\n",
}

// pop3Transaction runs the same commands on any connection after login,
// and returns every reply line, so that two runs can be compared.
func pop3Transaction(c *pop3Client) ([]string, error) {
	var out []string
	for _, cmd := range []string{"STAT", "LIST", "LIST 2", "UIDL", "UIDL 3", "RETR 1", "RETR 3", "TOP 2 1", "DELE 1", "STAT", "LIST 1", "RETR 1", "NOOP", "DELE 3", "RSET", "DELE 3", "LIST"} {
		if multiLine(cmd) {
			first, body, err := c.multi(cmd)
			if err != nil {
				return out, fmt.Errorf("%s: %w", cmd, err)
			}
			out = append(out, cmd+" -> "+first)
			out = append(out, body...)
			continue
		}
		r, err := c.cmd(cmd)
		if err != nil {
			return out, fmt.Errorf("%s: %w", cmd, err)
		}
		out = append(out, cmd+" -> "+r)
	}
	return out, c.quit()
}

func multiLine(cmd string) bool {
	verb, arg, _ := strings.Cut(cmd, " ")
	return verb == "RETR" || verb == "TOP" || verb == "CAPA" || (verb == "LIST" || verb == "UIDL") && arg == ""
}

// TestPOP3EndToEnd: login and STAT/LIST/UIDL/RETR/TOP/DELE/RSET/QUIT through
// mailproxy over plain, STLS and implicit TLS give the same replies as the
// same commands sent directly to a twin of the backend, and the deletions
// land on the backend.
func TestPOP3EndToEnd(t *testing.T) {
	tests := []struct {
		name     string
		listener string
		backend  string // the backend's tls
		login    func(e *env, c *pop3Client) error
	}{
		{"plain, USER PASS", "pop3", "none", func(_ *env, c *pop3Client) error { return c.login("alice", "pw") }},
		{"STLS, AUTH PLAIN", "pop3-tls-only", "none", func(e *env, c *pop3Client) error {
			if err := c.stls(e.ClientTLS()); err != nil {
				return err
			}
			_, err := c.ok("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")))
			return err
		}},
		{"implicit TLS, AUTH LOGIN", "pop3s", "none", func(_ *env, c *pop3Client) error {
			for _, l := range []string{"AUTH LOGIN", "YWxpY2U=", "cHc="} {
				if r, err := c.cmd(l); err != nil || strings.HasPrefix(r, "-ERR") {
					return fmt.Errorf("%s: %q %v", l, r, err)
				}
			}
			return nil
		}},
		{"implicit TLS, backend STLS", "pop3s", "starttls", func(_ *env, c *pop3Client) error { return c.login("alice", "pw") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withTLS := func(s *demo.POP3Server) { s.TLSConfig = backendTLS(t) }
			proxied, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, withTLS)
			twin, twinAddr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, withTLS)
			for _, m := range pop3Mailbox {
				proxied.Add("alice", m)
				twin.Add("alice", m)
			}
			backendCfg := ""
			if tt.backend != "none" {
				backendCfg = fmt.Sprintf("tls = %q\ntls_skip_verify = true", tt.backend)
			}
			e := startProxy(t, pop3Config("", backendCfg, "mail1", addr))

			direct, err := dialPOP3(twinAddr, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := direct.login("alice", "pw"); err != nil {
				t.Fatal(err)
			}
			want, err := pop3Transaction(direct)
			if err != nil {
				t.Fatalf("direct: %v", err)
			}

			var cfg *tls.Config
			if tt.listener == "pop3s" {
				cfg = e.ClientTLS()
			}
			c, err := dialPOP3(e.Addr[tt.listener], cfg)
			if err != nil {
				t.Fatal(err)
			}
			if c.Greeting != "+OK mailproxy ready." {
				t.Errorf("greeting %q", c.Greeting)
			}
			if err := tt.login(e, c); err != nil {
				t.Fatalf("login: %v", err)
			}
			got, err := pop3Transaction(c)
			if err != nil {
				t.Fatalf("through mailproxy: %v", err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("through mailproxy:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if !slices.Contains(got, fmt.Sprintf("RETR 1 -> +OK %d octets", len(pop3Mailbox[0]))) || !slices.Contains(got, ".leading dot") {
				t.Fatalf("transaction did not run as expected:\n%s", strings.Join(got, "\n"))
			}
			if m := proxied.Messages("alice"); !slices.Equal(m, twin.Messages("alice")) || !slices.Equal(m, pop3Mailbox[:2]) {
				t.Fatalf("after QUIT the backend holds %q, the twin %q", m, twin.Messages("alice"))
			}
		})
	}
}

// backendTLS is a server config for a fake backend, with the proxy's test
// certificate (the proxy does not verify it: tls_skip_verify).
func backendTLS(t *testing.T) *tls.Config {
	tc, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{tc.cert}}
}

// pop3Session logs in as user with password, runs STAT and quits.
func pop3Session(addr, user, password string) error {
	c, err := dialPOP3(addr, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.login(user, password); err != nil {
		return err
	}
	if _, err := c.ok("STAT"); err != nil {
		return err
	}
	return c.quit()
}

// runSessions runs one POP3 session per user, workers at a time, and
// returns every error.
func runSessions(addr string, users []string, workers int) []error {
	jobs := make(chan string)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range jobs {
				if err := pop3Session(addr, u, "pw"); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", u, err))
					mu.Unlock()
				}
			}
		}()
	}
	for _, u := range users {
		jobs <- u
	}
	close(jobs)
	wg.Wait()
	return errs
}

func userNames(n int, prefix string) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

// TestPOP3RoundRobin: 100 connections of distinct users over three
// backends are split 34/33/33; with one backend stopped, or one that
// accepts and never greets, every connection still succeeds on the others.
func TestPOP3RoundRobin(t *testing.T) {
	all := users(100, "u")
	start := func(t *testing.T) ([]*demo.POP3Server, []string) {
		var srvs []*demo.POP3Server
		var cfg []string
		for i := 1; i <= 3; i++ {
			s, addr := pop3Backend(t, fmt.Sprintf("mail%d", i), all, nil)
			srvs = append(srvs, s)
			cfg = append(cfg, s.Name, addr)
		}
		return srvs, cfg
	}
	t.Run("all up", func(t *testing.T) {
		srvs, backends := start(t)
		e := startProxy(t, pop3Config("", "", backends...))
		for _, err := range runSessions(e.Addr["pop3"], userNames(100, "u"), 8) {
			t.Error(err)
		}
		var counts []int
		for _, s := range srvs {
			counts = append(counts, s.Logins())
		}
		slices.Sort(counts)
		if !slices.Equal(counts, []int{33, 33, 34}) {
			t.Fatalf("logins per backend %v, want 33, 33 and 34", counts)
		}
	})
	t.Run("one stopped", func(t *testing.T) {
		srvs, backends := start(t)
		srvs[1].Close()
		e := startProxy(t, pop3Config("", "", backends...))
		for _, err := range runSessions(e.Addr["pop3"], userNames(100, "u"), 8) {
			t.Error(err)
		}
		if n := srvs[0].Logins() + srvs[2].Logins(); n != 100 || srvs[1].Logins() != 0 {
			t.Fatalf("logins %d, %d, %d", srvs[0].Logins(), srvs[1].Logins(), srvs[2].Logins())
		}
	})
	t.Run("one never greets", func(t *testing.T) {
		srvs, backends := start(t)
		backends[3] = mute(t)
		e := startProxy(t, pop3Config("", "", backends...))
		// Eight at once: a session still waiting for the mute backend's
		// greeting when another session's failure takes it down must move
		// on to the next backend, not fail.
		for _, err := range runSessions(e.Addr["pop3"], userNames(100, "u"), 8) {
			t.Error(err)
		}
		if n := srvs[0].Logins() + srvs[2].Logins(); n != 100 {
			t.Fatalf("logins %d and %d", srvs[0].Logins(), srvs[2].Logins())
		}
	})
}

// mute is a listener that accepts connections and closes them at once,
// without a greeting.
func mute(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestPOP3LeastConn: with pop3 = "least-conn", six sessions held open at
// once spread two per backend.
func TestPOP3LeastConn(t *testing.T) {
	all := users(6, "u")
	var srvs []*demo.POP3Server
	var backends []string
	for i := 1; i <= 3; i++ {
		s, addr := pop3Backend(t, fmt.Sprintf("mail%d", i), all, nil)
		srvs = append(srvs, s)
		backends = append(backends, s.Name, addr)
	}
	e := startProxy(t, pop3Config("pop3 = \"least-conn\"\n", "", backends...))
	for _, u := range userNames(6, "u") {
		c, err := dialPOP3(e.Addr["pop3"], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.login(u, "pw"); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range srvs {
		if s.Logins() != 2 {
			t.Errorf("%s has %d sessions, want 2", s.Name, s.Logins())
		}
	}
}

// TestPOP3FollowsIMAPLease: a POP3 login of a user with a live IMAP session
// lands on that session's backend, every time; and a POP3 session holds a
// lease of its own that a new IMAP session follows.
func TestPOP3FollowsIMAPLease(t *testing.T) {
	tracker := demo.NewTracker()
	pop3s := map[string]*demo.POP3Server{}
	cfg := `
[limits]
auth_failure_delay = "0s"

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

[[pool]]
name = "main"
`
	accounts := map[string]string{"alice": "pw", "bob": "pw", "carol": "pw"}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("mail%d", i)
		imapAddr := trackedIMAPBackend(t, name, accounts, tracker)
		p, popAddr := pop3Backend(t, name, accounts, func(s *demo.POP3Server) { s.Tracker = tracker })
		pop3s[name] = p
		cfg += fmt.Sprintf("\n[[pool.backend]]\nname = %q\nimap = %q\npop3 = %q\n", name, imapAddr, popAddr)
	}
	e := startProxy(t, cfg)
	pool := e.Srv.Pool("main")

	imapc, err := imapclient.DialInsecure(e.Addr["imap"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer imapc.Close()
	if err := imapc.Login("alice", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	home := onlyBackend(t, tracker, "alice")

	before := map[string]int{}
	for n, p := range pop3s {
		before[n] = p.Logins()
	}
	for i := range 20 {
		if err := pop3Session(e.Addr["pop3"], "alice", "pw"); err != nil {
			t.Fatalf("POP3 session %d: %v", i, err)
		}
	}
	for n, p := range pop3s {
		want := before[n]
		if n == home {
			want += 20
		}
		if p.Logins() != want {
			t.Errorf("%s: %d POP3 logins, want %d (alice's IMAP session is on %s)", n, p.Logins()-before[n], want-before[n], home)
		}
	}

	t.Run("without a lease, round-robin", func(t *testing.T) {
		seen := map[string]bool{}
		for range 6 {
			c, err := dialPOP3(e.Addr["pop3"], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.login("bob", "pw"); err != nil {
				t.Fatal(err)
			}
			seen[onlyBackend(t, tracker, "bob")] = true
			if err := c.quit(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "bob's lease to end", func() bool {
				_, live, _, _ := pool.Lookup(context.Background(), "bob")
				return live == 0
			})
		}
		if len(seen) < 2 {
			t.Fatalf("bob always went to %v", seen)
		}
	})

	t.Run("a POP3 session holds a lease", func(t *testing.T) {
		c, err := dialPOP3(e.Addr["pop3"], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.login("carol", "pw"); err != nil {
			t.Fatal(err)
		}
		popHome := onlyBackend(t, tracker, "carol")
		ic, err := imapclient.DialInsecure(e.Addr["imap"], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ic.Close()
		if err := ic.Login("carol", "pw").Wait(); err != nil {
			t.Fatal(err)
		}
		if s := tracker.Sessions("carol"); s[popHome] != 2 || len(s) != 1 {
			t.Fatalf("carol's sessions %v, want 2 on %s", s, popHome)
		}
	})
	if s := tracker.Splits(); len(s) > 0 {
		t.Fatalf("users split over backends: %q", s)
	}
}

// trackedIMAPBackend is imapBackend with a tracker set before it serves.
func trackedIMAPBackend(t *testing.T, name string, users map[string]string, tr *demo.Tracker) string {
	t.Helper()
	b := demo.NewIMAPServer(name, users, nil)
	b.Tracker = tr
	return testkit.Serve(t, b)
}

// onlyBackend returns the one backend user has sessions on.
func onlyBackend(t *testing.T, tr *demo.Tracker, user string) string {
	t.Helper()
	s := tr.Sessions(user)
	if len(s) != 1 {
		t.Fatalf("%s has sessions on %v, want one backend", user, s)
	}
	for b := range s {
		return b
	}
	return ""
}

var apopStamp = regexp.MustCompile(`<[^<>@]+@([^<>]+)>`)

func apopDigest(greeting, password string) string {
	sum := md5.Sum([]byte(apopStamp.FindString(greeting) + password))
	return hex.EncodeToString(sum[:])
}

// TestPOP3APOP: through an apop = true listener the client gets the
// backend's greeting with its timestamp, and APOP (checked by the fake
// against its own timestamp) logs in on that backend; USER/PASS goes there
// too.
func TestPOP3APOP(t *testing.T) {
	accounts := map[string]string{"alice": "pw"}
	m1, a1 := pop3Backend(t, "mail1", accounts, nil)
	m2, a2 := pop3Backend(t, "mail2", accounts, nil)
	byName := map[string]*demo.POP3Server{"mail1": m1, "mail2": m2}
	e := startProxy(t, strings.Replace(pop3Config("", "", "mail1", a1, "mail2", a2), "name = \"pop3s\"", "name = \"pop3s\"\napop = true", 1))
	for i := range 4 {
		c, err := dialPOP3(e.Addr["pop3s"], e.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		m := apopStamp.FindStringSubmatch(c.Greeting)
		if m == nil || !strings.HasPrefix(c.Greeting, "+OK "+m[1]+" ready.") {
			t.Fatalf("greeting %q is not a backend's APOP greeting", c.Greeting)
		}
		srv := byName[m[1]]
		before := srv.Logins()
		if r, err := c.cmd("APOP alice " + apopDigest(c.Greeting, "wrong")); err != nil || r != "-ERR [AUTH] Authentication failed." {
			t.Fatalf("wrong digest: %q %v", r, err)
		}
		if i%2 == 0 {
			_, err = c.ok("APOP alice " + apopDigest(c.Greeting, "pw"))
		} else {
			err = c.login("alice", "pw")
		}
		if err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		if _, err := c.ok("STAT"); err != nil {
			t.Fatal(err)
		}
		if err := c.quit(); err != nil {
			t.Fatal(err)
		}
		if srv.Logins() != before+1 {
			t.Fatalf("the login did not land on %s, whose greeting the client got", m[1])
		}
	}
	if m1.Logins() != 2 || m2.Logins() != 2 {
		t.Fatalf("logins %d and %d, want round-robin at connect", m1.Logins(), m2.Logins())
	}
}

func TestPOP3APOPNoBackend(t *testing.T) {
	cfg := strings.Replace(pop3Config("", "", "mail1", deadAddr(t)), "name = \"pop3\"", "name = \"pop3\"\napop = true", 1)
	e := startProxy(t, cfg)
	s := dialScript(t, e.Addr["pop3"])
	s.expect("-ERR [SYS/TEMP] ")
	s.expectClosed()
}

// deadAddr is an address where nothing listens.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestPOP3NoBackend(t *testing.T) {
	e := startProxy(t, pop3Config("", "", "mail1", deadAddr(t)))
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK mailproxy ready.")
	s.send("USER alice\r\nPASS pw\r\n")
	s.expect("+OK")
	s.expect("-ERR [SYS/TEMP] Service unavailable, try again later.")
}

// TestPOP3WrongPassword: the client gets -ERR with the backend's reason and
// may try again on the same connection.
func TestPOP3WrongPassword(t *testing.T) {
	srv, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, pop3Config("", "", "mail1", addr))
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK mailproxy ready.")
	s.send("USER alice\r\n")
	s.expect("+OK")
	s.send("PASS nope\r\n")
	s.expect("-ERR [AUTH] Authentication failed.")
	s.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00nope2")) + "\r\n")
	s.expect("-ERR [AUTH] Authentication failed.")
	srv.RejectLogins.Store(true)
	s.send("USER alice\r\nPASS pw\r\n")
	s.expect("+OK")
	s.expect("-ERR [SYS/PERM] Logins are disabled on mail1.")
	srv.RejectLogins.Store(false)
	s.send("USER alice\r\nPASS pw\r\n")
	s.expect("+OK")
	s.expect("+OK Logged in.")
	s.send("QUIT\r\n")
	s.expect("+OK Logging out.")
	s.expectClosed()
}

// TestPOP3RequireTLS: before STLS, CAPA offers neither USER nor SASL and
// every login is refused without asking a backend; after STLS it works.
func TestPOP3RequireTLS(t *testing.T) {
	srv, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, pop3Config("", "", "mail1", addr))
	c, err := dialPOP3(e.Addr["pop3-tls-only"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	caps, err := c.capa()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(caps, "STLS") || slices.Contains(caps, "USER") || slices.ContainsFunc(caps, func(s string) bool { return strings.HasPrefix(s, "SASL") }) {
		t.Fatalf("CAPA before STLS: %q", caps)
	}
	for _, cmd := range []string{"USER alice", "PASS pw", "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")), "AUTH LOGIN"} {
		if r, err := c.cmd(cmd); err != nil || !strings.HasPrefix(r, "-ERR") {
			t.Fatalf("%s before STLS: %q %v", cmd, r, err)
		}
	}
	if err := c.stls(e.ClientTLS()); err != nil {
		t.Fatal(err)
	}
	caps, err = c.capa()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") || !slices.Contains(caps, "SASL PLAIN LOGIN") {
		t.Fatalf("CAPA after STLS: %q", caps)
	}
	if err := c.login("alice", "pw"); err != nil {
		t.Fatal(err)
	}
	if srv.Logins() != 1 {
		t.Fatalf("%d logins", srv.Logins())
	}
}

// TestPOP3STLSInjection: a command sent in the same write as STLS is
// dropped, never executed after the handshake.
func TestPOP3STLSInjection(t *testing.T) {
	_, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, pop3Config("", "", "mail1", addr))
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK mailproxy ready.")
	s.send("STLS\r\nUSER alice\r\n")
	s.expect("+OK Begin TLS")
	s.upgrade(e.ClientTLS())
	s.send("PASS pw\r\n")
	s.expect("-ERR USER first.")
}

// TestPOP3NoPasswordInLogs: at debug level, no password (nor its base64)
// reaches the log, whether the login fails or succeeds.
func TestPOP3NoPasswordInLogs(t *testing.T) {
	const pw = "Very-Secret-9"
	_, addr := pop3Backend(t, "mail1", map[string]string{"alice": pw}, nil)
	e := startProxy(t, pop3Config("", "", "mail1", addr))
	plain := func(p string) string { return base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + p)) }
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK")
	s.send("USER alice\r\nPASS x" + pw + "\r\n")
	s.expect("+OK")
	s.expect("-ERR [AUTH]")
	s.send("AUTH PLAIN " + plain("y"+pw) + "\r\n")
	s.expect("-ERR [AUTH]")
	s.send("AUTH LOGIN\r\n")
	s.expect("+ ")
	s.send(base64.StdEncoding.EncodeToString([]byte("alice")) + "\r\n")
	s.expect("+ ")
	s.send(base64.StdEncoding.EncodeToString([]byte("z"+pw)) + "\r\n")
	s.expect("-ERR [AUTH]")
	s.send("AUTH PLAIN " + plain(pw) + "\r\n")
	s.expect("+OK Logged in.")
	s.send("QUIT\r\n")
	s.expect("+OK")
	s.expectClosed()
	s.conn.Close()
	waitFor(t, 5*time.Second, "the session end line", func() bool { return strings.Contains(e.Logs.String(), "session end") })
	logs := e.Logs.String()
	if !strings.Contains(logs, "alice") {
		t.Fatalf("the log does not name the user:\n%s", logs)
	}
	for _, secret := range []string{pw, plain(pw), base64.StdEncoding.EncodeToString([]byte(pw))} {
		if strings.Contains(logs, secret) {
			t.Fatalf("the log contains %q:\n%s", secret, logs)
		}
	}
}

// TestPOP3ForwardClient: with forward_client, a backend that offers
// XCLIENT (Dovecot's [XCLIENT] greeting code) learns the client's address.
func TestPOP3ForwardClient(t *testing.T) {
	srv, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, func(s *demo.POP3Server) { s.XCLIENT = true })
	e := startProxy(t, pop3Config("", "forward_client = true", "mail1", addr))
	if err := pop3Session(e.Addr["pop3"], "alice", "pw"); err != nil {
		t.Fatal(err)
	}
	if f := srv.Forwarded(); !slices.Equal(f, []string{"127.0.0.1"}) {
		t.Fatalf("XCLIENT ADDR %q", f)
	}
}

// TestPOP3TooManyErrors: bad commands before login end the connection.
func TestPOP3TooManyErrors(t *testing.T) {
	_, addr := pop3Backend(t, "mail1", nil, nil)
	e := startProxy(t, pop3Config("", "", "mail1", addr))
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK")
	for range 9 {
		s.send("RETR 1\r\n")
		s.expect("-ERR Log in first.")
	}
	s.send("BOGUS\r\n")
	s.expect("-ERR Too many errors")
	s.expectClosed()
}
