// Package redisstore tests mailproxy instances sharing their routing state
// through a real redis-server: three instances run as subprocesses of the
// mailproxy binary (built once by TestMain), so that one can be killed
// with SIGKILL; the fake IMAP backends run in the test and share one
// demo.Tracker, which records any user logged in on two of them at once.
// redis-server comes from the Debian package (install.sh here, which
// .ci/run calls under CI=true); without it the tests skip, or fail when
// CI=true.
package redisstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/proxy/admin"
)

// binary is the mailproxy built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailproxy-redisstore-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "mailproxy")
	build := exec.Command("go", "build", "-o", binary, "mailproxy/cmd/mailproxy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build mailproxy:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// backend is a fake IMAP backend: every user has msgs messages in INBOX,
// so a SELECT tells which backend a session reached. It can be stopped
// and started again on its address.
type backend struct {
	t       *testing.T
	name    string
	addr    string
	users   []string
	msgs    int
	tracker *demo.Tracker
	srv     *demo.IMAPServer
	done    chan struct{}
}

func newBackend(t *testing.T, name string, msgs int, users []string, tr *demo.Tracker) *backend {
	b := &backend{t: t, name: name, addr: "127.0.0.1:0", users: users, msgs: msgs, tracker: tr}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *backend) start() {
	b.t.Helper()
	var ln net.Listener
	var err error
	testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		ln, err = net.Listen("tcp", b.addr)
		return err == nil || !errors.Is(err, syscall.EADDRINUSE)
	})
	if err != nil {
		b.t.Fatalf("%s: listen: %v", b.name, err)
	}
	b.addr = ln.Addr().String()
	srv := demo.NewIMAPServer(b.name, nil, nil)
	for _, u := range b.users {
		user := srv.AddUser(u, "pw")
		for i := range b.msgs {
			user.Append("INBOX", strings.NewReader(fmt.Sprintf("Subject: %d on %s\r\n\r\nhello\r\n", i, b.name)), &goimap.AppendOptions{})
		}
	}
	srv.Tracker = b.tracker
	b.srv, b.done = srv, make(chan struct{})
	go func() { defer close(b.done); srv.Serve(ln) }()
}

// stop crashes the backend: listener and sessions close at once.
func (b *backend) stop() {
	if b.srv == nil {
		return
	}
	b.srv.Close()
	<-b.done
	b.srv = nil
}

// instance is one mailproxy process on the shared Redis.
type instance struct {
	t         *testing.T
	name      string
	imap      string // client listener
	adminAddr string
	cfg       string // config file
	cmd       *exec.Cmd
	done      chan struct{}
	log       *testkit.SyncBuffer // its stderr, all runs
	api       *admin.Client
}

// cluster is the shared part of a test: Redis, backends, instances.
type cluster struct {
	t        *testing.T
	redis    *testkit.Redis
	tracker  *demo.Tracker
	backends []*backend
	inst     []*instance
}

// newCluster starts Redis, three backends (mail1..mail3 with 1..3
// messages) knowing users, and n instances named a, b, c... with the
// given lease_ttl and linger.
func newCluster(t *testing.T, n int, users []string, leaseTTL, linger string) *cluster {
	c := &cluster{t: t, redis: testkit.StartRedis(t), tracker: demo.NewTracker()}
	for i, name := range []string{"mail1", "mail2", "mail3"} {
		c.backends = append(c.backends, newBackend(t, name, i+1, users, c.tracker))
	}
	dir := t.TempDir()
	for i := range n {
		in := &instance{t: t, name: string(rune('a' + i)), imap: freePort(t), adminAddr: freePort(t), log: &testkit.SyncBuffer{}}
		in.api = &admin.Client{Addr: in.adminAddr}
		in.cfg = filepath.Join(dir, in.name+".toml")
		if err := os.WriteFile(in.cfg, []byte(c.config(in, leaseTTL, linger)), 0o600); err != nil {
			t.Fatal(err)
		}
		in.start()
		t.Cleanup(in.stop)
		c.inst = append(c.inst, in)
	}
	return c
}

func (c *cluster) config(in *instance, leaseTTL, linger string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[admin]
listen = %q
[limits]
shutdown_grace = "1s"
max_connections_per_ip = 10000
[[listener]]
name = "imap"
protocol = "imap"
address = %q
pool = "p"
[[pool]]
name = "p"
linger = %q
  [pool.health]
  interval = "100ms"
  timeout = "5s"
  rise = 2
  fall = 2
`, in.adminAddr, in.imap, linger)
	for _, be := range c.backends {
		fmt.Fprintf(&b, "  [[pool.backend]]\n  name = %q\n  imap = %q\n", be.name, be.addr)
	}
	fmt.Fprintf(&b, `[store]
type = "redis"
address = %q
instance = %q
prefix = "t:"
lease_ttl = %q
`, c.redis.Addr, in.name, leaseTTL)
	return b.String()
}

// start runs the instance and waits until its admin API and its client
// listener answer.
func (in *instance) start() {
	in.t.Helper()
	in.cmd = exec.Command(binary, "run", "-config", in.cfg)
	in.cmd.Stderr, in.cmd.Stdout = in.log, in.log
	if err := in.cmd.Start(); err != nil {
		in.t.Fatal(err)
	}
	in.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(in.cmd, in.done)
	up := testkit.Eventually(15*time.Second, 20*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := in.api.Status(ctx)
		if err != nil {
			return false
		}
		conn, err := net.DialTimeout("tcp", in.imap, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	if !up {
		in.t.Fatalf("instance %s did not come up:\n%s", in.name, in.log.String())
	}
}

// kill ends the instance with SIGKILL: no goodbye to Redis.
func (in *instance) kill() {
	if in.cmd == nil {
		return
	}
	in.cmd.Process.Kill()
	<-in.done
	in.cmd = nil
}

// stop ends the instance with SIGTERM (graceful) and waits for it.
func (in *instance) stop() {
	if in.cmd == nil {
		return
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(10 * time.Second):
		in.cmd.Process.Kill()
		<-in.done
	}
	in.cmd = nil
}

// user is where the instance says user is: backend and live sessions.
func (in *instance) user(t *testing.T, user string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	us, err := in.api.User(ctx, user)
	if err != nil {
		t.Fatalf("%s: user %s: %v", in.name, user, err)
	}
	for _, p := range us.Pools {
		return p.Backend, p.Live
	}
	return "", 0
}

// metric reads one sample (name with its labels) from the instance's
// /metrics: 0 when absent, -1 when the instance does not answer.
func (in *instance) metric(name string) float64 {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + in.adminAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(f, 64)
			return v
		}
	}
	return 0
}

// session is one logged-in IMAP client and the backend it reached.
type session struct {
	c       *imapclient.Client
	backend string
}

// login logs user in through addr and selects INBOX; the message count
// names the backend.
func login(addr, user string) (*session, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, "pw").Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("select %s: %w", user, err)
	}
	if sel.NumMessages < 1 || sel.NumMessages > 3 {
		c.Close()
		return nil, fmt.Errorf("%s: %d messages: which backend is that?", user, sel.NumMessages)
	}
	return &session{c: c, backend: fmt.Sprint("mail", sel.NumMessages)}, nil
}

func (s *session) close() {
	s.c.Logout().Wait()
	s.c.Close()
}

func users(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(prefix, i)
	}
	return out
}
