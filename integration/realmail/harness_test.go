package realmail

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"mailproxy/internal/testkit"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// harness is one start.sh DIR: two Dovecots and a Postfix on loopback.
type harness struct {
	base string // holds dir and the mailproxy binary
	dir  string // start.sh DIR
	bin  string // the mailproxy binary
	env  map[string]string
	pool *x509.CertPool // trusts REALMAIL_TLS_CERT
}

func scriptPath(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), name)
}

func stopScript() string { return scriptPath("stop.sh") }

func (h *harness) start() error {
	out, err := output(90*time.Second, scriptPath("start.sh"), h.dir)
	if err != nil {
		return fmt.Errorf("start.sh %s: %v\n%s", h.dir, err, out)
	}
	if h.env, err = readEnv(filepath.Join(h.dir, "env")); err != nil {
		return err
	}
	return h.loadRoots()
}

// stop runs stop.sh (it copes with an instance a test already stopped)
// and removes everything the run created.
func (h *harness) stop() error {
	start := time.Now()
	out, err := output(90*time.Second, stopScript(), h.dir)
	if err != nil {
		return fmt.Errorf("stop.sh %s: %v\n%s", h.dir, err, out)
	}
	fmt.Fprintf(os.Stderr, "realmail: harness stopped in %v\n", time.Since(start).Round(time.Millisecond))
	os.Remove(lastRunFile)
	return os.RemoveAll(h.base)
}

// readEnv parses DIR/env: KEY=value lines, no quoting.
func readEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	return env, nil
}

// get returns a DIR/env value and fails the test when it is missing.
func (h *harness) get(t *testing.T, key string) string {
	t.Helper()
	v, ok := h.env[key]
	if !ok || v == "" {
		t.Fatalf("DIR/env has no %s", key)
	}
	return v
}

// addr is 127.0.0.1 with the port in DIR/env variable key.
func (h *harness) addr(t *testing.T, key string) string {
	return net.JoinHostPort(h.get(t, "REALMAIL_HOST"), h.get(t, key))
}

// roots trusts the harness certificate, which mailproxy serves too.
func (h *harness) roots(*testing.T) *x509.CertPool { return h.pool }

func (h *harness) loadRoots() error {
	pem, err := os.ReadFile(h.env["REALMAIL_TLS_CERT"])
	if err != nil {
		return err
	}
	h.pool = x509.NewCertPool()
	if !h.pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", h.env["REALMAIL_TLS_CERT"])
	}
	return nil
}

// instances are the two Dovecots by mailproxy backend name.
var instances = []string{"a", "b"}

func (h *harness) conf(t *testing.T, inst string) string {
	return h.get(t, "DOVECOT_"+strings.ToUpper(inst)+"_CONF")
}

// who is one line of `doveadm who -1`: one connection.
type who struct{ user, proto, pid, ip string }

// who returns Dovecot's own list of live sessions on inst.
func (h *harness) who(t *testing.T, inst string) ([]who, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "doveadm", "-c", h.conf(t, inst), "who", "-1").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("doveadm who on dovecot-%s: %v: %s", inst, err, out)
	}
	var ws []who
	for _, line := range strings.Split(string(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 4 {
			ws = append(ws, who{f[0], f[1], f[2], f[3]})
		}
	}
	return ws, nil
}

// whoUsers counts live sessions per user on each instance, for users
// with the given name prefix set (nil: all).
func (h *harness) whoUsers(t *testing.T, want map[string]bool) map[string]map[string]int {
	t.Helper()
	out := map[string]map[string]int{}
	for _, inst := range instances {
		ws, err := h.who(t, inst)
		if err != nil {
			t.Fatal(err)
		}
		out[inst] = map[string]int{}
		for _, w := range ws {
			if want == nil || want[w.user] {
				out[inst][w.user]++
			}
		}
	}
	return out
}

// logMark is where each log ended when a test step began.
type logMark map[string]int64

func (h *harness) logFile(t *testing.T, inst string) string {
	if inst == "postfix" {
		return h.get(t, "POSTFIX_LOG")
	}
	return h.get(t, "DOVECOT_"+strings.ToUpper(inst)+"_LOG")
}

func (h *harness) mark(t *testing.T) logMark {
	t.Helper()
	m := logMark{}
	for _, inst := range append([]string{"postfix"}, instances...) {
		if fi, err := os.Stat(h.logFile(t, inst)); err == nil {
			m[inst] = fi.Size()
		}
	}
	return m
}

// since returns the lines inst logged after the mark.
func (h *harness) since(t *testing.T, m logMark, inst string) []string {
	t.Helper()
	f, err := os.Open(h.logFile(t, inst))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(m[inst], io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// login is one "Login:" line of a Dovecot login process.
type login struct {
	inst, proto, user, rip, session, line string
}

var loginRE = regexp.MustCompile(`(imap|pop3|managesieve)-login: Info: Login: user=<([^>]*)>.*? rip=([^,]+),.*? session=<([^>]*)>`)

// logins returns Dovecot's successful logins since m, on both instances.
func (h *harness) logins(t *testing.T, m logMark) []login {
	t.Helper()
	var out []login
	for _, inst := range instances {
		for _, line := range h.since(t, m, inst) {
			if s := loginRE.FindStringSubmatch(line); s != nil {
				out = append(out, login{inst, s[1], s[2], s[3], s[4], line})
			}
		}
	}
	return out
}

// waitLogins polls the Dovecot logs (a file another process writes has no
// event to wait on) until cond holds for the logins since m.
func (h *harness) waitLogins(t *testing.T, m logMark, what string, cond func([]login) bool) []login {
	t.Helper()
	var ls []login
	poll(t, 15*time.Second, what, func() bool {
		ls = h.logins(t, m)
		return cond(ls)
	})
	return ls
}

// poll checks cond until it holds or d passes. It is for state in other
// processes (logs, doveadm, the Maildir), which sends no event.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !testkit.Eventually(d, 50*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// delivered waits until Postfix has put a message containing token into
// every user's Maildir.
func (h *harness) delivered(t *testing.T, token string, users ...string) {
	t.Helper()
	root := h.get(t, "REALMAIL_MAIL_ROOT")
	for _, u := range users {
		poll(t, 30*time.Second, "delivery of "+token+" to "+u, func() bool {
			return maildirHas(filepath.Join(root, u), token)
		})
	}
}

func maildirHas(dir, token string) bool {
	for _, sub := range []string{"new", "cur"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
			if err == nil && strings.Contains(string(b), token) {
				return true
			}
		}
	}
	return false
}

// greets waits until addr accepts a connection and sends a line with prefix.
func greets(t *testing.T, addr, prefix string, d time.Duration) {
	t.Helper()
	poll(t, d, addr+" greeting", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && strings.HasPrefix(line, prefix)
	})
}

// run runs a command under a timeout and returns its combined output.
func run(t *testing.T, d time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	return output(d, name, args...)
}

// output runs a command under a timeout and returns its combined output.
// The output goes through a file, not a pipe: a daemon the command starts
// (dovecot, postfix) inherits it and would hold a pipe open for ever.
func output(d time.Duration, name string, args ...string) (string, error) {
	f, err := os.CreateTemp("", "realmail-out")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v", name, d)
	}
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}

func users(from, n int) []string {
	us := make([]string, n)
	for i := range us {
		us[i] = fmt.Sprintf("user%d", from+i)
	}
	return us
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
