package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/proxy"
	"mailproxy/proxy/admin"
	"mailproxy/proxy/peer"
)

// The active/standby pair end to end: two mailproxy servers in one process,
// each with its peer.Node on a loopback UDP socket, in front of one shared
// fake IMAP backend. Each server opens its listener on its own 127.0.0.1:0
// (a real pair shares one address, which only the active one binds).

const (
	pairInterval  = 100 * time.Millisecond
	pairDeadAfter = 500 * time.Millisecond
	// pairSlack is what the race detector and a busy machine may add to
	// a takeover on loopback.
	pairSlack = time.Second
)

var pairSecret = []byte("pair secret for tests")

// cuttableConn is a UDP socket that can be cut off both ways, as a crashed
// or partitioned host is, while the node behind it keeps running.
type cuttableConn struct {
	net.PacketConn
	cut atomic.Bool
}

func (c *cuttableConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.PacketConn.ReadFrom(b)
		if err != nil || !c.cut.Load() {
			return n, a, err
		}
	}
}

func (c *cuttableConn) WriteTo(b []byte, to net.Addr) (int, error) {
	if c.cut.Load() {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, to)
}

func listenUDP(t *testing.T) *cuttableConn {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &cuttableConn{PacketConn: c}
}

// pairNode is one instance of the pair under test.
type pairNode struct {
	name  string
	srv   *proxy.Server
	node  *peer.Node
	conn  *cuttableConn
	roles chan peer.Role
	logs  *testkit.SyncBuffer
	stop  func() // stops the node (its goodbye included); the server stays
}

type pairSpec struct {
	name     string
	priority int
	preempt  bool
	secret   []byte // default pairSecret
}

// startPairNode runs one instance on conn, sending heartbeats to peerAddr,
// in front of the IMAP backend at backend.
func startPairNode(t *testing.T, s pairSpec, conn *cuttableConn, peerAddr net.Addr, backend string) *pairNode {
	t.Helper()
	if s.secret == nil {
		s.secret = pairSecret
	}
	text := fmt.Sprintf(`
[admin]
listen = ""

[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"

[[pool]]
name = "main"
  [[pool.backend]]
  name = "mail1"
  imap = %q

[peer]
node = %q
listen = "127.0.0.1:1"
address = %q
secret_file = "unused: the test hands the secret in"
priority = %d
interval = %q
dead_after = %q
preempt = %v
`, backend, s.name, peerAddr.String(), s.priority, pairInterval.String(), pairDeadAfter.String(), s.preempt)
	cfg, err := config.Parse([]byte(text), t.Name()+"/"+s.name)
	if err != nil {
		t.Fatal(err)
	}
	pn := &pairNode{name: s.name, conn: conn, roles: make(chan peer.Role, 16), logs: &testkit.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(pn.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pn.srv, err = proxy.New(cfg, proxy.Options{Logger: log, Handlers: handlers(),
		Listen: func(network, _ string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }})
	if err != nil {
		t.Fatal(err)
	}
	pn.srv.StartBackground()
	pn.node, err = peer.New(cfg.Peer, peer.Options{Logger: log, Conn: conn, Secret: s.secret, Service: pn.srv,
		OnRole: func(r peer.Role) { pn.roles <- r }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pn.node.Run(ctx) }()
	pn.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", s.name, err)
		}
	})
	t.Cleanup(func() {
		pn.stop()
		pn.srv.Close()
		if t.Failed() {
			t.Logf("%s log:\n%s", s.name, pn.logs)
		}
	})
	return pn
}

// expectRole waits for the next role the node applies and returns how
// long it took.
func (pn *pairNode) expectRole(t *testing.T, want peer.Role, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case r := <-pn.roles:
		if r != want {
			t.Fatalf("%s: role %v, want %v", pn.name, r, want)
		}
	case <-time.After(within):
		t.Fatalf("%s: no %v within %v", pn.name, want, within)
	}
	return time.Since(start)
}

// expectNoRole checks that no role change is pending.
func (pn *pairNode) expectNoRole(t *testing.T) {
	t.Helper()
	select {
	case r := <-pn.roles:
		t.Fatalf("%s: unexpected role %v", pn.name, r)
	default:
	}
}

// addr is the address the node's IMAP listener serves, or "".
func (pn *pairNode) addr() string {
	for _, l := range pn.srv.Listeners() {
		if l.Serving {
			return l.Address
		}
	}
	return ""
}

// waitHeard waits until the node has accepted n more heartbeats from a
// peer it sees in role: the state the assertions after it need has had
// n intervals to go wrong.
func (pn *pairNode) waitHeard(t *testing.T, n uint64, role string) {
	t.Helper()
	from := pn.node.Status().Peer.Heard
	waitFor(t, 10*time.Second, fmt.Sprintf("%s to hear %d heartbeats of a %s peer", pn.name, n, role), func() bool {
		p := pn.node.Status().Peer
		return p.Heard >= from+n && p.Role == role && p.Alive
	})
}

// startActivePair starts lb1 (priority 100) and lb2 (priority 50) and waits
// until lb1 is active and lb2 has heard so.
func startActivePair(t *testing.T, backend string) (*pairNode, *pairNode) {
	t.Helper()
	ca, cb := listenUDP(t), listenUDP(t)
	a := startPairNode(t, pairSpec{name: "lb1", priority: 100}, ca, cb.LocalAddr(), backend)
	b := startPairNode(t, pairSpec{name: "lb2", priority: 50}, cb, ca.LocalAddr(), backend)
	a.expectRole(t, peer.Standby, 10*time.Second)
	b.expectRole(t, peer.Standby, 10*time.Second)
	a.expectRole(t, peer.Active, 10*time.Second)
	b.waitHeard(t, 3, "active")
	return a, b
}

// TestPairFailover: exactly one instance opens its listener; when the
// active one is lost, the standby opens its own and serves an IMAP login
// within about dead_after + interval.
func TestPairFailover(t *testing.T) {
	_, backend := imapBackend(t, "mail1", users(3, "u"), nil)
	a, b := startActivePair(t, backend)
	if a.addr() == "" || b.addr() != "" {
		t.Fatalf("serving: lb1 %q, lb2 %q; want lb1 only", a.addr(), b.addr())
	}
	c, err := loginIMAP(a.addr(), "u1")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	api := admin.New(b.srv, admin.Options{Peer: b.node.Status})
	hs := httptest.NewServer(api.Handler())
	defer hs.Close()
	ac := &admin.Client{Addr: hs.URL}
	st, err := ac.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "lb2" || st.Role != "standby" || st.Peer == nil || st.Peer.Node != "lb1" || st.Peer.Role != "active" ||
		!st.Peer.Alive || st.Peer.Priority != 100 || st.Listeners[0].Serving {
		t.Errorf("lb2 /status: %+v, peer %+v", st, st.Peer)
	}

	a.conn.cut.Store(true) // lb1 is gone, as far as lb2 can tell
	start := time.Now()
	d := b.expectRole(t, peer.Active, 10*time.Second)
	t.Logf("lb2 active %v after lb1 was cut off", d)
	if d < pairDeadAfter-pairInterval || d > pairDeadAfter+pairInterval+pairSlack {
		t.Errorf("takeover after %v, want about %v to %v", d, pairDeadAfter-pairInterval, pairDeadAfter+pairInterval)
	}
	if b.addr() == "" {
		t.Fatal("lb2 is active but serves nothing")
	}
	c, err = loginIMAP(b.addr(), "u2")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d := time.Since(start); d > pairDeadAfter+pairInterval+pairSlack {
		t.Errorf("login through lb2 %v after lb1 was lost", d)
	}

	st, err = ac.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != "active" || st.Peer.Alive || !strings.Contains(st.RoleReason, "no live peer") || !st.Listeners[0].Serving {
		t.Errorf("lb2 /status after takeover: %+v, peer %+v", st, st.Peer)
	}
	var out bytes.Buffer
	if err := admin.Ctl(context.Background(), ac, []string{"status"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "node lb2, active\npeer lb1 (") || !strings.Contains(out.String(), "lost, last heard") {
		t.Errorf("ctl status:\n%s", out.String())
	}
}

// TestPairGracefulStop: an active instance that stops says goodbye; the
// standby takes over without waiting for dead_after. The leaving one closes
// its listener but leaves its live sessions to the server's shutdown.
func TestPairGracefulStop(t *testing.T) {
	_, backend := imapBackend(t, "mail1", users(3, "u"), nil)
	a, b := startActivePair(t, backend)
	s := dialScript(t, a.addr())
	s.expect("* OK")
	s.send("a LOGIN u1 pw\r\n")
	s.expect("a OK")

	a.stop()
	a.expectRole(t, peer.Standby, 10*time.Second)
	if d := b.expectRole(t, peer.Active, 10*time.Second); d > pairDeadAfter/2 {
		t.Errorf("takeover %v after the goodbye, want well under dead_after %v", d, pairDeadAfter)
	}
	if a.addr() != "" {
		t.Errorf("lb1 stopped but still serves %s", a.addr())
	}
	s.send("b NOOP\r\n")
	s.expect("b OK")
	c, err := loginIMAP(b.addr(), "u2")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestPairBadSecret: an instance with the wrong secret, claiming the
// highest priority and the active role, is refused and logged by both,
// and changes nothing: lb1 stays active, and lb2 still takes over in time
// when lb1 is lost.
func TestPairBadSecret(t *testing.T) {
	_, backend := imapBackend(t, "mail1", users(3, "u"), nil)
	a, b := startActivePair(t, backend)
	ci := listenUDP(t)
	impostor := startPairNode(t, pairSpec{name: "lb0", priority: 1000, secret: []byte("guessed")}, ci, b.conn.LocalAddr(), backend)
	impostor.expectRole(t, peer.Standby, 10*time.Second)
	impostor.expectRole(t, peer.Active, 10*time.Second) // it hears nobody: its own split brain
	waitFor(t, 10*time.Second, "lb2 to refuse 5 heartbeats of the impostor", func() bool {
		return b.node.Status().Peer.Rejected >= 5
	})
	b.waitHeard(t, 3, "active")
	if p := b.node.Status().Peer; p.Node != "lb1" || !strings.Contains(p.LastError, "MAC does not match") {
		t.Errorf("lb2's peer: %+v", p)
	}
	b.expectNoRole(t)
	a.expectNoRole(t)
	if !strings.Contains(b.logs.String(), `msg="peer heartbeat rejected"`) {
		t.Error("lb2 did not log the rejected heartbeats")
	}

	a.conn.cut.Store(true)
	if d := b.expectRole(t, peer.Active, 10*time.Second); d > pairDeadAfter+pairInterval+pairSlack {
		t.Errorf("takeover after %v despite the impostor, want about %v", d, pairDeadAfter+pairInterval)
	}
}

// TestPairPreempt: lb2 (priority 50) is active alone when lb1 (priority
// 100) starts. With preempt off lb1 stays standby and lb2's sessions go on;
// with preempt on lb1 takes over at once, and lb2 closes its listener and
// ends its sessions (lb1 cannot see their leases).
func TestPairPreempt(t *testing.T) {
	for _, preempt := range []bool{false, true} {
		t.Run(fmt.Sprintf("preempt=%v", preempt), func(t *testing.T) {
			_, backend := imapBackend(t, "mail1", users(3, "u"), nil)
			cl, ch := listenUDP(t), listenUDP(t)
			lo := startPairNode(t, pairSpec{name: "lb2", priority: 50}, cl, ch.LocalAddr(), backend)
			lo.expectRole(t, peer.Standby, 10*time.Second)
			lo.expectRole(t, peer.Active, 10*time.Second)
			s := dialScript(t, lo.addr())
			s.expect("* OK")
			s.send("a LOGIN u1 pw\r\n")
			s.expect("a OK")

			hi := startPairNode(t, pairSpec{name: "lb1", priority: 100, preempt: preempt}, ch, cl.LocalAddr(), backend)
			hi.expectRole(t, peer.Standby, 10*time.Second)
			if !preempt {
				hi.waitHeard(t, 5, "active")
				hi.expectNoRole(t)
				lo.expectNoRole(t)
				if hi.addr() != "" || lo.addr() == "" {
					t.Errorf("serving: lb1 %q, lb2 %q; want lb2 only", hi.addr(), lo.addr())
				}
				s.send("b NOOP\r\n")
				s.expect("b OK")
				return
			}
			if d := hi.expectRole(t, peer.Active, 10*time.Second); d > pairDeadAfter/2 {
				t.Errorf("lb1 took over after %v, want at once", d)
			}
			lo.expectRole(t, peer.Standby, 10*time.Second)
			if hi.addr() == "" || lo.addr() != "" {
				t.Errorf("serving: lb1 %q, lb2 %q; want lb1 only", hi.addr(), lo.addr())
			}
			s.expectClosed()
			c, err := loginIMAP(hi.addr(), "u1")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			lo.waitHeard(t, 5, "active")
			hi.expectNoRole(t)
			lo.expectNoRole(t)
		})
	}
}
