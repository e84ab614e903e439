package realmail

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mailproxy is one running mailproxy binary in front of the harness.
type mailproxy struct {
	t      *testing.T
	h      *harness
	cmd    *exec.Cmd
	config string
	Addr   map[string]string // listener name -> 127.0.0.1:port
	Admin  string            // admin API base URL
	logs   *lines
	exited chan struct{}
}

// proxyOptions shape the config; the zero value is the usual setup.
type proxyOptions struct {
	pins   map[string]string // routing key -> backend
	linger string            // default "60s"
	// backendTLS is the backends' tls; for starttls and implicit they are
	// verified against the harness certificate (name localhost).
	backendTLS string
	// lmtp adds the LMTP listener on the harness's MAILPROXY_LMTP_PORT,
	// where Postfix delivers the LMTP users, and [auth] default_domain, so
	// that an IMAP login "user200" and a recipient "user200@example.test"
	// are one user.
	lmtp bool
}

// listenerSpec is one [[listener]] the tests may use.
type listenerSpec struct{ name, proto, tls, extra string }

var listenerSpecs = []listenerSpec{
	{"imap", "imap", "starttls", ""},
	{"imaps", "imap", "implicit", ""},
	{"pop3", "pop3", "starttls", ""},
	{"pop3s", "pop3", "implicit", ""},
	{"smtp", "smtp", "starttls", `smtp_auth = "off"`},
	{"submission", "smtp", "starttls", "require_tls = true\nsmtp_auth = \"required\""},
	{"sieve", "managesieve", "starttls", ""},
}

// unbuilt remembers protocols the binary has no handler for, so that later
// starts leave their listeners out at once.
var unbuilt = struct {
	sync.Mutex
	protos map[string]bool
}{protos: map[string]bool{}}

var notBuiltRE = regexp.MustCompile(`protocol (\w+) is not built yet`)

// startProxy writes a config and runs mailproxy with it until the test
// ends. Listeners of protocols the binary does not have yet are left out
// (see has); the test that needs one skips.
func startProxy(t *testing.T, h *harness, o proxyOptions) *mailproxy {
	t.Helper()
	for range 3 { // at most one retry per protocol that may be missing
		p, missingProto := tryStartProxy(t, h, o)
		if p != nil {
			return p
		}
		unbuilt.Lock()
		unbuilt.protos[missingProto] = true
		unbuilt.Unlock()
	}
	t.Fatal("mailproxy did not start")
	return nil
}

func (p *mailproxy) has(proto string) bool {
	unbuilt.Lock()
	defer unbuilt.Unlock()
	return !unbuilt.protos[proto]
}

// needProto skips the test when mailproxy has no handler for proto.
func (p *mailproxy) needProto(t *testing.T, proto string) {
	t.Helper()
	if !p.has(proto) {
		t.Skipf("mailproxy has no %s handler yet: protocols/%s is not registered in cmd/mailproxy handlers() (`mailproxy run` says \"protocol %s is not built yet\")", strings.ToUpper(proto), proto, proto)
	}
}

func tryStartProxy(t *testing.T, h *harness, o proxyOptions) (*mailproxy, string) {
	t.Helper()
	unbuilt.Lock()
	var specs []listenerSpec
	for _, l := range listenerSpecs {
		if !unbuilt.protos[l.proto] {
			specs = append(specs, l)
		}
	}
	unbuilt.Unlock()
	ports := freePorts(t, len(specs)+1)
	p := &mailproxy{t: t, h: h, Addr: map[string]string{}, logs: &lines{}, exited: make(chan struct{})}
	p.Admin = "http://" + ports[len(specs)]
	for i, l := range specs {
		p.Addr[l.name] = ports[i]
	}
	if o.lmtp && !unbuilt.protos["lmtp"] {
		specs = append(specs, listenerSpec{"lmtp", "lmtp", "none", ""})
		p.Addr["lmtp"] = h.addr(t, "MAILPROXY_LMTP_PORT")
	}
	p.config = filepath.Join(t.TempDir(), "mailproxy.toml")
	if err := os.WriteFile(p.config, []byte(p.configText(t, specs, o)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(h.bin, "run", "-config", p.config)
	p.cmd.SysProcAttr = procAttr()
	if os.Getenv("GORACE") == "" {
		// A -race binary sleeps 1s at exit by default; every test would
		// pay it. Races found while it runs are reported all the same.
		p.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=50")
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.logs.readFrom(stderr)
		p.cmd.Wait()
		close(p.exited)
	}()
	up := func() bool {
		for _, l := range specs {
			if len(p.logs.find("listening", "listener", l.name)) == 0 {
				return false
			}
		}
		return true
	}
	if !p.logs.wait(20*time.Second, p.exited, up) {
		<-p.exited
		out := p.logs.text()
		if m := notBuiltRE.FindStringSubmatch(out); m != nil && p.has(m[1]) {
			return nil, m[1]
		}
		t.Fatalf("mailproxy did not start listening (config %s):\n%s", p.config, out)
	}
	t.Cleanup(p.stop)
	return p, ""
}

func (p *mailproxy) configText(t *testing.T, specs []listenerSpec, o proxyOptions) string {
	h := p.h
	var b strings.Builder
	fmt.Fprintf(&b, `[log]
level = "debug"
format = "json"

[admin]
listen = %q

[tls]
cert = %q
key = %q

[limits]
max_connections_per_ip = 1000
auth_failure_delay = "0s"
shutdown_grace = "2s"
`, strings.TrimPrefix(p.Admin, "http://"), h.get(t, "REALMAIL_TLS_CERT"), h.get(t, "REALMAIL_TLS_KEY"))
	if o.lmtp {
		fmt.Fprintf(&b, "\n[auth]\ndefault_domain = %q\n", h.get(t, "REALMAIL_DOMAIN"))
	}
	for _, l := range specs {
		fmt.Fprintf(&b, "\n[[listener]]\nname = %q\nprotocol = %q\naddress = %q\ntls = %q\npool = \"main\"\nhostname = \"mailproxy.test\"\n%s\n",
			l.name, l.proto, p.Addr[l.name], l.tls, l.extra)
	}
	linger := o.linger
	if linger == "" {
		linger = "60s"
	}
	fmt.Fprintf(&b, "\n[[pool]]\nname = \"main\"\nlinger = %q\n", linger)
	if len(o.pins) > 0 {
		var kv []string
		for u, be := range o.pins {
			kv = append(kv, fmt.Sprintf("%q = %q", u, be))
		}
		slices.Sort(kv)
		fmt.Fprintf(&b, "pins = { %s }\n", strings.Join(kv, ", "))
	}
	b.WriteString("\n  [pool.health]\n  interval = \"500ms\"\n  timeout = \"3s\"\n  rise = 2\n  fall = 2\n")
	btls := "tls = \"none\""
	if o.backendTLS != "" && o.backendTLS != "none" {
		btls = fmt.Sprintf("tls = %q\n  tls_server_name = \"localhost\"\n  tls_ca = %q", o.backendTLS, h.get(t, "REALMAIL_TLS_CERT"))
	}
	for _, inst := range instances {
		I := strings.ToUpper(inst)
		fmt.Fprintf(&b, "\n  [[pool.backend]]\n  name = %q\n  imap = %q\n  pop3 = %q\n  smtp = %q\n  %s\n  forward_client = true\n",
			inst, h.addr(t, "DOVECOT_"+I+"_IMAP_PORT"), h.addr(t, "DOVECOT_"+I+"_POP3_PORT"), h.addr(t, "POSTFIX_SMTP_PORT"), btls)
		fmt.Fprintf(&b, "  lmtp = %q\n  managesieve = %q\n", h.addr(t, "DOVECOT_"+I+"_LMTP_PORT"), h.addr(t, "DOVECOT_"+I+"_SIEVE_PORT"))
	}
	return b.String()
}

// stop ends mailproxy with SIGTERM (graceful) and fails the test on a
// panic or an error line in its log.
func (p *mailproxy) stop() {
	t := p.t
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("mailproxy did not stop within 15s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("mailproxy exited with status %d after SIGTERM", code)
	}
	if strings.Contains(p.logs.text(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a data race in mailproxy (log below)")
	}
	for _, e := range p.logs.entries() {
		if e["level"] == "ERROR" {
			t.Errorf("mailproxy logged an error: %v", e)
		}
	}
	if t.Failed() {
		t.Logf("mailproxy log (config %s):\n%s", p.config, p.logs.text())
	}
}

// sessions returns the "session end" entries of the log for user.
func (p *mailproxy) sessions(user string) []map[string]any {
	return p.logs.find("session end", "user", user)
}

// status fetches GET /status from the admin API.
func (p *mailproxy) status() (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.Admin + "/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET /status: %s: %s", resp.Status, b)
	}
	return string(b), err
}

// clientTLS trusts mailproxy's certificate (the harness's).
func (p *mailproxy) clientTLS(t *testing.T) *tls.Config {
	return &tls.Config{RootCAs: p.h.roots(t), ServerName: "127.0.0.1"}
}

// backendSessions returns the sessions mailproxy's /status counts on a
// backend of pool main.
func (p *mailproxy) backendSessions(backend string) (int, error) {
	body, err := p.status()
	if err != nil {
		return 0, err
	}
	var st struct {
		Pools []struct {
			Name     string
			Backends []struct {
				Name     string
				Sessions int
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return 0, fmt.Errorf("GET /status: %w", err)
	}
	for _, pl := range st.Pools {
		for _, b := range pl.Backends {
			if pl.Name == "main" && b.Name == backend {
				return b.Sessions, nil
			}
		}
	}
	return 0, fmt.Errorf("GET /status has no backend main/%s: %s", backend, body)
}

// freePorts reserves n distinct loopback ports and releases them for
// mailproxy to bind (config addresses need real ports, not :0).
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// lines collects a process's JSON log and wakes waiters on every line.
type lines struct {
	mu      sync.Mutex
	raw     []string
	changed chan struct{}
}

func (l *lines) readFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.raw = append(l.raw, sc.Text())
		if l.changed != nil {
			close(l.changed)
			l.changed = nil
		}
		l.mu.Unlock()
	}
}

// wait blocks until cond holds (checked on every new line), stop closes,
// or d passes.
func (l *lines) wait(d time.Duration, stop <-chan struct{}, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-stop:
			return cond()
		case <-deadline.C:
			return cond()
		}
	}
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.raw, "\n")
}

func (l *lines) entries() []map[string]any {
	l.mu.Lock()
	raw := slices.Clone(l.raw)
	l.mu.Unlock()
	var out []map[string]any
	for _, r := range raw {
		var e map[string]any
		if json.Unmarshal([]byte(r), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// find returns the entries with message msg whose key has value val.
func (l *lines) find(msg, key, val string) []map[string]any {
	var out []map[string]any
	for _, e := range l.entries() {
		if e["msg"] == msg && (key == "" || fmt.Sprint(e[key]) == val) {
			out = append(out, e)
		}
	}
	return out
}

// waitSessionEnds waits until the log has n "session end" lines for user.
func (p *mailproxy) waitSessionEnds(t *testing.T, user string, n int) []map[string]any {
	t.Helper()
	ok := p.logs.wait(15*time.Second, p.exited, func() bool { return len(p.sessions(user)) >= n })
	if !ok {
		t.Fatalf("mailproxy logged %d of %d session ends for %s", len(p.sessions(user)), n, user)
	}
	return p.sessions(user)
}

// ctx is a context that ends with the test, bounded by d.
func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}
