package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/proxy/admin"
	"mailproxy/routing"
)

// opsConfig is one plain IMAP listener in front of pool "p" (linger 60s)
// with fast health checks (interval 50ms, timeout 200ms, rise 2, fall 2)
// and the given backends (name, address pairs). extra goes at the end of
// the [[pool]] table, before the backends, and may set linger and
// [pool.health] itself.
func opsConfig(extra string, backends ...string) string {
	var b strings.Builder
	b.WriteString(`
[auth]
default_domain = "example.org"

[limits]
auth_failure_delay = "0s"
max_connections_per_ip = 10000

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "p"

[[pool]]
name = "p"
`)
	if !strings.Contains(extra, "linger =") {
		b.WriteString("linger = \"60s\"\n")
	}
	b.WriteString(extra)
	if !strings.Contains(extra, "[pool.health]") {
		b.WriteString(`
  [pool.health]
  interval = "50ms"
  timeout = "200ms"
  rise = 2
  fall = 2
`)
	}
	for i := 0; i+1 < len(backends); i += 2 {
		fmt.Fprintf(&b, "\n[[pool.backend]]\nname = %q\nimap = %q\n", backends[i], backends[i+1])
	}
	return b.String()
}

// opsBackend is an in-memory IMAP backend that can crash and come back on
// the same address. Every user's INBOX holds msgs messages, so a client
// can tell the backends apart by what SELECT says.
type opsBackend struct {
	t       *testing.T
	name    string
	users   map[string]string
	tracker *demo.Tracker
	msgs    int
	wrap    func(net.Listener) net.Listener // optional: TLS, counting

	addr string
	srv  *demo.IMAPServer
	done chan struct{}
}

// newOpsBackend starts a backend on 127.0.0.1:0; it stops with the test.
func newOpsBackend(t *testing.T, name string, users map[string]string, tr *demo.Tracker, msgs int) *opsBackend {
	t.Helper()
	f := &opsBackend{t: t, name: name, users: users, tracker: tr, msgs: msgs, addr: "127.0.0.1:0"}
	f.start()
	t.Cleanup(f.stop)
	return f
}

// relisten listens on addr, which a stopped fake just released. A port
// freed on loopback can be taken for a moment by another socket's
// ephemeral port (a health check's dial), so it tries again for a while.
func relisten(addr string) (net.Listener, error) {
	var ln net.Listener
	var err error
	testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil || !errors.Is(err, syscall.EADDRINUSE)
	})
	return ln, err
}

// start listens on the backend's address (again, after stop).
func (f *opsBackend) start() {
	f.t.Helper()
	ln, err := relisten(f.addr)
	if err != nil {
		f.t.Fatalf("%s: listen: %v", f.name, err)
	}
	f.addr = ln.Addr().String()
	if f.wrap != nil {
		ln = f.wrap(ln)
	}
	srv := demo.NewIMAPServer(f.name, nil, nil)
	for u, pw := range f.users {
		user := srv.AddUser(u, pw)
		for i := range f.msgs {
			msg := fmt.Sprintf("Subject: %d on %s\r\n\r\nhello\r\n", i, f.name)
			user.Append("INBOX", strings.NewReader(msg), &goimap.AppendOptions{})
		}
	}
	srv.Tracker = f.tracker
	f.srv, f.done = srv, make(chan struct{})
	go func() { defer close(f.done); srv.Serve(ln) }()
}

// stop crashes the backend: listener and connections close at once.
func (f *opsBackend) stop() {
	if f.srv == nil {
		return
	}
	f.srv.Close()
	<-f.done
	f.srv = nil
}

// startAdmin serves e's admin API on 127.0.0.1:0, logging to e.Logs, and
// returns a client for it.
func startAdmin(t *testing.T, e *env, token string) *admin.Client {
	t.Helper()
	log := slog.New(slog.NewTextHandler(e.Logs, nil))
	api := admin.New(e.Srv, admin.Options{Token: token, Node: "test-node", Logger: log, Metrics: e.Srv.MetricsHandler()})
	hs := httptest.NewServer(api.Handler())
	t.Cleanup(hs.Close)
	return &admin.Client{Addr: hs.URL, Token: token}
}

// loginIMAP connects to the proxy and logs user in with password "pw".
func loginIMAP(addr, user string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, "pw").Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	return c, nil
}

// mustLogin is loginIMAP for the test goroutine; the client closes with
// the test.
func mustLogin(t *testing.T, e *env, user string) *imapclient.Client {
	t.Helper()
	c, err := loginIMAP(e.Addr["imap"], user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// backendStatus finds one backend in /status.
func backendStatus(t *testing.T, c *admin.Client, name string) routing.BackendStatus {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if b.Name == name {
				return b
			}
		}
	}
	t.Fatalf("no backend %s in /status", name)
	return routing.BackendStatus{}
}

// ctl runs `mailproxy ctl ARGS` in-process against c and returns what it
// printed.
func ctl(t *testing.T, c *admin.Client, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.Ctl(ctx, c, args, &out); err != nil {
		t.Fatalf("ctl %v: %v", args, err)
	}
	return out.String()
}

// call makes a raw HTTP request to the admin API and decodes the JSON
// answer into a map.
func call(t *testing.T, c *admin.Client, method, path, token string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, c.Addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %q", method, path, body)
	}
	return resp.StatusCode, resp.Header, m
}

// TestDrainWithCtl is issue 6 item 3: after `mailproxy ctl drain`, new
// users go elsewhere, live sessions continue (and their users' new
// sessions still land there), /status counts the sessions down to zero as
// they log out, and `ctl kick` closes the rest at once.
func TestDrainWithCtl(t *testing.T) {
	tr := demo.NewTracker()
	all := users(60, "u")
	var cfg []string
	for _, name := range []string{"mail1", "mail2", "mail3"} {
		f := newOpsBackend(t, name, all, tr, 0)
		cfg = append(cfg, name, f.addr)
	}
	e := startProxy(t, opsConfig("", cfg...))
	ac := startAdmin(t, e, "")

	// Thirty users log in; keep the sessions of those on mail1.
	var held []*imapclient.Client
	var heldUsers []string
	for i := range 30 {
		user := fmt.Sprintf("u%d", i)
		c := mustLogin(t, e, user)
		if tr.Sessions(user)["mail1"] == 1 {
			held, heldUsers = append(held, c), append(heldUsers, user)
			continue
		}
		c.Logout().Wait()
	}
	if len(held) < 2 {
		t.Fatalf("only %d of 30 users on mail1", len(held))
	}
	waitFor(t, 5*time.Second, "other users' sessions to end", func() bool {
		return backendStatus(t, ac, "mail2").Sessions+backendStatus(t, ac, "mail3").Sessions == 0
	})

	out := ctl(t, ac, "drain", "p", "mail1")
	if !strings.Contains(out, "p/mail1 is draining") || !strings.Contains(out, fmt.Sprintf("%d sessions left", len(held))) {
		t.Errorf("ctl drain printed %q", out)
	}
	if !strings.Contains(e.Logs.String(), `msg="backend draining" pool=p backend=mail1`) {
		t.Errorf("no drain log line")
	}

	// New users go elsewhere.
	for i := 30; i < 60; i++ {
		user := fmt.Sprintf("u%d", i)
		c := mustLogin(t, e, user)
		if n := tr.Sessions(user)["mail1"]; n != 0 {
			t.Errorf("new user %s went to draining mail1", user)
		}
		c.Logout().Wait()
	}
	// A user who is live on mail1 still goes there.
	second := mustLogin(t, e, heldUsers[0])
	if s := tr.Sessions(heldUsers[0]); s["mail1"] != 2 || len(s) != 1 {
		t.Errorf("second session of %s (live on draining mail1): %v, want mail1:2", heldUsers[0], s)
	}
	second.Logout().Wait()
	// Live sessions go on working.
	for i, c := range held {
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Errorf("session of %s after drain: select: %v", heldUsers[i], err)
		}
	}
	waitFor(t, 5*time.Second, "the second session to end", func() bool {
		return backendStatus(t, ac, "mail1").Sessions == len(held)
	})
	st := backendStatus(t, ac, "mail1")
	if st.State != "draining" || st.Sessions != len(held) || st.Users != len(held) {
		t.Errorf("/status mail1 = %+v, want draining with %d sessions", st, len(held))
	}

	// The count falls to zero as the sessions log out.
	for i, c := range held {
		if err := c.Logout().Wait(); err != nil {
			t.Errorf("logout %s: %v", heldUsers[i], err)
		}
		want := len(held) - i - 1
		waitFor(t, 5*time.Second, fmt.Sprintf("mail1 at %d sessions", want), func() bool {
			return backendStatus(t, ac, "mail1").Sessions == want
		})
	}
	if st := backendStatus(t, ac, "mail1"); st.State != "draining" {
		t.Errorf("mail1 is %s after its sessions ended, want draining", st.State)
	}

	// Kick: bring two users back to mail1 (they linger there), drain
	// again and kick.
	ctl(t, ac, "undrain", "p", "mail1")
	var kicked []*imapclient.Client
	for _, user := range heldUsers[:2] {
		c := mustLogin(t, e, user)
		if tr.Sessions(user)["mail1"] != 1 {
			t.Fatalf("%s did not come back to mail1: %v", user, tr.Sessions(user))
		}
		kicked = append(kicked, c)
	}
	ctl(t, ac, "drain", "p", "mail1")
	out = ctl(t, ac, "kick", "p", "mail1")
	if !strings.Contains(out, "kicked 2 sessions on p/mail1; 0 left") {
		t.Errorf("ctl kick printed %q", out)
	}
	for i, c := range kicked {
		select {
		case <-c.Closed():
		case <-time.After(5 * time.Second):
			t.Errorf("kicked session of %s still open", heldUsers[i])
		}
	}
	if st := backendStatus(t, ac, "mail1"); st.Sessions != 0 {
		t.Errorf("mail1 has %d sessions after kick", st.Sessions)
	}
	if !strings.Contains(e.Logs.String(), `msg="kicked 2 sessions" pool=p backend=mail1`) {
		t.Errorf("no kick log line")
	}
	waitFor(t, 5*time.Second, "the kicked sessions to end on mail1", func() bool {
		return tr.Sessions(heldUsers[0])["mail1"]+tr.Sessions(heldUsers[1])["mail1"] == 0
	})
	if s := tr.Splits(); len(s) > 0 {
		t.Errorf("users split over backends: %v", s)
	}
}

// TestAdminStatus checks /status: node, role, listeners with their real
// addresses, and every backend's state, sessions, users and health.
func TestAdminStatus(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(3, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr, "mail2", "127.0.0.1:1"))
	ac := startAdmin(t, e, "")
	waitFor(t, 5*time.Second, "mail2 (nothing listens) down", func() bool {
		return backendStatus(t, ac, "mail2").State == "down"
	})
	mustLogin(t, e, "u1")
	mustLogin(t, e, "u1")

	st, err := ac.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "test-node" || st.Role != "active" {
		t.Errorf("node %q role %q", st.Node, st.Role)
	}
	if len(st.Listeners) != 1 || st.Listeners[0].Address != e.Addr["imap"] || !st.Listeners[0].Serving || st.Listeners[0].Pool != "p" {
		t.Errorf("listeners %+v, want imap on %s", st.Listeners, e.Addr["imap"])
	}
	if len(st.Pools) != 1 || len(st.Pools[0].Backends) != 2 {
		t.Fatalf("pools %+v", st.Pools)
	}
	b1, b2 := st.Pools[0].Backends[0], st.Pools[0].Backends[1]
	if b1.State != "up" || b1.Sessions != 2 || b1.Users != 1 || b1.Health["imap"] != "up" {
		t.Errorf("mail1 %+v, want up with 2 sessions of 1 user", b1)
	}
	if b2.State != "down" || b2.Health["imap"] != "down" || !strings.Contains(b2.Reason["imap"], "connection refused") {
		t.Errorf("mail2 %+v, want down, connection refused", b2)
	}
	var out bytes.Buffer
	if err := admin.Ctl(context.Background(), ac, []string{"status"}, &out); err != nil {
		t.Fatal(err)
	}
	t.Logf("ctl status:\n%s", out.String())
	for _, want := range []string{"node test-node, active", "imap      imap      " + e.Addr["imap"], "mail1    up     2         1", "imap=down (check failed: connect:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ctl status lacks %q", want)
		}
	}
}

// TestAdminUser checks /users/{user}: the name is normalised as [auth]
// says, and the answer has the binding, the live count, the sessions and
// the pin.
func TestAdminUser(t *testing.T) {
	tr := demo.NewTracker()
	f1 := newOpsBackend(t, "mail1", users(3, "u"), tr, 0)
	f2 := newOpsBackend(t, "mail2", users(3, "u"), tr, 0)
	e := startProxy(t, opsConfig(`pins = { "u2@example.org" = "mail2" }`+"\n", "mail1", f1.addr, "mail2", f2.addr))
	ac := startAdmin(t, e, "")
	ctx := context.Background()

	c := mustLogin(t, e, "u1")
	mustLogin(t, e, "u1")
	us, err := ac.User(ctx, "U1")
	if err != nil {
		t.Fatal(err)
	}
	where := ""
	for b := range tr.Sessions("u1") {
		where = b
	}
	p := us.Pools[0]
	if us.User != "u1@example.org" || p.Pool != "p" || p.Backend != where || p.Live != 2 || len(p.Sessions) != 2 ||
		p.Sessions[0] != (routing.SessionInfo{Backend: where, Protocol: "imap"}) {
		t.Errorf("/users/U1 = %+v, want u1@example.org on %s with 2 imap sessions", us, where)
	}
	c.Logout().Wait()
	waitFor(t, 5*time.Second, "one session left", func() bool {
		us, _ := ac.User(ctx, "u1@example.org")
		return us != nil && us.Pools[0].Live == 1
	})

	us, err = ac.User(ctx, "u2")
	if err != nil {
		t.Fatal(err)
	}
	if p := us.Pools[0]; p.Backend != "" || p.Live != 0 || p.Pin != "mail2" || len(p.Sessions) != 0 {
		t.Errorf("/users/u2 = %+v, want unbound, pinned to mail2", us)
	}
	var out bytes.Buffer
	admin.Ctl(ctx, ac, []string{"user", "U1"}, &out)
	if !strings.Contains(out.String(), "user u1@example.org") || !strings.Contains(out.String(), where+" imap") {
		t.Errorf("ctl user printed %q", out.String())
	}
}

// TestAdminToken checks that with a token POST calls need it (401
// otherwise, and nothing happens) while GET calls do not.
func TestAdminToken(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr))
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token, err := admin.ReadToken(path)
	if err != nil || token != "s3cret-token" {
		t.Fatalf("ReadToken = %q, %v", token, err)
	}
	os.WriteFile(filepath.Join(dir, "empty"), []byte(" \n"), 0o600)
	if _, err := admin.ReadToken(filepath.Join(dir, "empty")); err == nil {
		t.Errorf("an empty token file was accepted")
	}
	ac := startAdmin(t, e, token)
	pool := e.Srv.Pool("p")
	for _, tok := range []string{"", "wrong", "s3cret-token-and-more", "s3cret-toke"} {
		code, h, body := call(t, ac, "POST", "/pools/p/backends/mail1/drain", tok)
		if code != 401 || body["error"] == nil || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("drain with token %q: %d %v", tok, code, body)
		}
	}
	if s := pool.State(pool.Backend("mail1"), routing.IMAP); s != routing.Up {
		t.Fatalf("mail1 is %v after refused drains", s)
	}
	if code, _, _ := call(t, ac, "GET", "/status", ""); code != 200 {
		t.Errorf("GET /status without token: %d", code)
	}
	if code, _, body := call(t, ac, "POST", "/pools/p/backends/mail1/drain", token); code != 200 || body["state"] != "draining" {
		t.Errorf("drain with the token: %d %v", code, body)
	}
	noToken := &admin.Client{Addr: ac.Addr}
	var out bytes.Buffer
	err = admin.Ctl(context.Background(), noToken, []string{"undrain", "p", "mail1"}, &out)
	if err == nil || !strings.Contains(err.Error(), "missing or wrong bearer token (HTTP 401)") {
		t.Errorf("ctl undrain without token: %v", err)
	}
	if !strings.Contains(e.Logs.String(), "admin call refused") {
		t.Errorf("refused calls not logged")
	}
	if strings.Contains(e.Logs.String(), "s3cret") {
		t.Errorf("the token is in the log")
	}
}

// TestAdminErrors checks the 404s and 405s, all in JSON.
func TestAdminErrors(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr))
	ac := startAdmin(t, e, "")
	for _, c := range []struct {
		method, path string
		code         int
		allow, msg   string
	}{
		{"POST", "/pools/nope/backends/mail1/drain", 404, "", `no pool "nope"`},
		{"POST", "/pools/p/backends/nope/kick", 404, "", `no backend "nope" in pool "p"`},
		{"POST", "/pools/p/backends/mail1/reboot", 404, "", `unknown action "reboot"`},
		{"GET", "/nowhere", 404, "", "no such endpoint"},
		{"GET", "/users/", 404, "", "no such endpoint"},
		{"GET", "/pools/p/backends/mail1/drain", 405, "POST", "method GET not allowed"},
		{"POST", "/status", 405, "GET", "method POST not allowed"},
		{"DELETE", "/users/u0", 405, "GET", "method DELETE not allowed"},
		{"PUT", "/metrics", 405, "GET", "method PUT not allowed"},
	} {
		code, h, body := call(t, ac, c.method, c.path, "")
		msg, _ := body["error"].(string)
		if code != c.code || h.Get("Allow") != c.allow || !strings.Contains(msg, c.msg) {
			t.Errorf("%s %s: %d Allow=%q %v; want %d Allow=%q %q", c.method, c.path, code, h.Get("Allow"), body, c.code, c.allow, c.msg)
		}
	}
	_, err := ac.Kick(context.Background(), "p", "nope")
	if err == nil || err.Error() != `no backend "nope" in pool "p" (HTTP 404)` {
		t.Errorf("Kick of an unknown backend: %v", err)
	}
	var out bytes.Buffer
	if err := admin.Ctl(context.Background(), ac, []string{"drain", "p"}, &out); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("ctl drain with one argument: %v", err)
	}
}

// TestAdminMetrics checks that /metrics has the session, login, byte and
// backend state series.
func TestAdminMetrics(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(2, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr))
	ac := startAdmin(t, e, "")
	c := mustLogin(t, e, "u0")
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	if _, err := loginIMAP(e.Addr["imap"], "nobody"); err == nil {
		t.Fatal("nobody logged in")
	}
	open := mustLogin(t, e, "u1")
	defer func() { open.Logout().Wait() }()
	var text string
	defer func() {
		if t.Failed() {
			t.Logf("metrics:\n%s", grepLines(text, "mailproxy_"))
		}
	}()
	waitFor(t, 5*time.Second, "the ended sessions counted", func() bool {
		resp, err := http.Get(ac.Addr + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text = string(b)
		// One scrape is not a snapshot (collectors run concurrently), so
		// wait for the gauge too, not only for the counters.
		return strings.Contains(text, `mailproxy_logins_total{listener="imap",protocol="imap",result="failed"} 1`) &&
			strings.Contains(text, `mailproxy_logins_total{listener="imap",protocol="imap",result="ok"} 1`) &&
			strings.Contains(text, `mailproxy_sessions{listener="imap",protocol="imap"} 1`)
	})
	for _, want := range []string{
		`mailproxy_sessions{listener="imap",protocol="imap"} 1`,
		`mailproxy_backend_sessions{backend="mail1",pool="p"} 1`,
		`mailproxy_backend_state{backend="mail1",pool="p",protocol="imap",state="up"} 1`,
		`mailproxy_backend_state{backend="mail1",pool="p",protocol="imap",state="down"} 0`,
		`mailproxy_relay_bytes_total{backend="mail1",direction="in",listener="imap"}`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
