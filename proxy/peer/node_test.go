package peer

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/proxy/config"
)

// The node tests run in a synctest bubble over memNet: time is fake, so
// the timings below are exact, and a test of seconds takes microseconds.
// Each node starts discardWindow after Run is called.

const (
	interval  = 200 * time.Millisecond
	deadAfter = time.Second
	startup   = discardWindow + time.Nanosecond // the first role is applied within this
)

// tnode is one running Node with its fake service and role events.
type tnode struct {
	*Node
	conn  *memConn
	svc   *fakeService
	roles chan Role
	logs  *testkit.SyncBuffer
	stop  func() // ends Run (goodbye included) and waits for it
}

type nodeSpec struct {
	name     string
	priority int
	preempt  bool
	secret   []byte // default testSecret
	svc      *fakeService
	addr     *fakeAddr // the virtual addresses; nil: none
	witness  string    // [peer] witness, answered by addr
	conn2    *memConn  // a second heartbeat path ...
	peer2    net.Addr  // ... to the peer's second socket
}

// startNode runs a node on conn that sends to peer. Call stop (or defer
// it) before the bubble ends.
func startNode(t *testing.T, conn *memConn, peer net.Addr, s nodeSpec) *tnode {
	t.Helper()
	if s.secret == nil {
		s.secret = testSecret
	}
	if s.svc == nil {
		s.svc = &fakeService{}
	}
	cfg := &config.PeerConfig{Node: s.name, Listen: conn.addr.String(), Address: peer.String(), SecretFile: "unused",
		Priority: s.priority, Preempt: s.preempt,
		Interval: config.Duration{Duration: interval}, DeadAfter: config.Duration{Duration: deadAfter}}
	tn := &tnode{conn: conn, svc: s.svc, roles: make(chan Role, 32), logs: &testkit.SyncBuffer{}}
	opts := Options{Logger: slog.New(slog.NewTextHandler(tn.logs, nil)), Conn: conn, Secret: s.secret,
		Service: s.svc, OnRole: func(r Role) { tn.roles <- r }}
	if s.conn2 != nil {
		cfg.Listen2, cfg.Address2, opts.Conn2 = s.conn2.addr.String(), s.peer2.String(), s.conn2
	}
	n, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if s.addr != nil {
		// No interface: the link is the test's to report (setLink), not
		// netlink's.
		n.addr, n.cfg.VIP = s.addr, []string{"192.0.2.100/24"}
	}
	if s.witness != "" {
		n.witness = netip.MustParseAddr(s.witness)
	}
	tn.Node = n
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tn.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", s.name, err)
		}
	})
	t.Cleanup(tn.stop)
	return tn
}

// expectRole waits up to within (fake time) for the next applied role and
// returns how long it took.
func (n *tnode) expectRole(t *testing.T, want Role, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	synctest.Wait() // a role already due is there now
	select {
	case r := <-n.roles:
		if r != want {
			t.Fatalf("%s: role %v, want %v\n%s", n.cfg.Node, r, want, n.logs)
		}
		return 0
	default:
	}
	select {
	case r := <-n.roles:
		if r != want {
			t.Fatalf("%s: role %v, want %v\n%s", n.cfg.Node, r, want, n.logs)
		}
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("%s: no %v within %v\n%s", n.cfg.Node, want, within, n.logs)
	}
	return 0
}

// expectQuiet checks that no role is applied for d.
func (n *tnode) expectQuiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case r := <-n.roles:
		t.Fatalf("%s: unexpected role %v\n%s", n.cfg.Node, r, n.logs)
	case <-time.After(d):
	}
	synctest.Wait()
	select {
	case r := <-n.roles:
		t.Fatalf("%s: unexpected role %v\n%s", n.cfg.Node, r, n.logs)
	default:
	}
}

// startPair starts lb1 (priority 100) and lb2 (priority 50) and waits
// until lb1 is active and lb2 standby.
func startPair(t *testing.T, nw *memNet, a, b nodeSpec) (*tnode, *tnode) {
	t.Helper()
	ca, cb := nw.listen(), nw.listen()
	na, nb := startNode(t, ca, cb.addr, a), startNode(t, cb, ca.addr, b)
	na.expectRole(t, Standby, startup)
	nb.expectRole(t, Standby, startup)
	// lb1 hears lb2 at once; both standby, so the higher one takes the role
	// without waiting for dead_after.
	if d := na.expectRole(t, Active, deadAfter); d != 0 {
		t.Errorf("lb1 took %v to become active, want no wait", d)
	}
	nb.expectQuiet(t, 3*deadAfter)
	return na, nb
}

func TestPairElectsOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		na, nb := startPair(t, newMemNet(), nodeSpec{name: "lb1", priority: 100}, nodeSpec{name: "lb2", priority: 50})
		defer na.stop()
		defer nb.stop()
		if open, _, _, _ := na.svc.state(); !open {
			t.Error("lb1 is active without listeners")
		}
		if open, opens, _, _ := nb.svc.state(); open || opens > 0 {
			t.Errorf("lb2 is standby but opened listeners %d times", opens)
		}
		sa, sb := na.Status(), nb.Status()
		if sa.Role != "active" || sb.Role != "standby" {
			t.Errorf("roles %s/%s", sa.Role, sb.Role)
		}
		if p := sb.Peer; p.Node != "lb1" || p.Role != "active" || p.Priority != 100 || !p.Alive || p.Heard < 10 || p.Rejected != 0 {
			t.Errorf("lb2's view of lb1: %+v", p)
		}
		if !strings.Contains(sb.Reason, "lb1 is active") {
			t.Errorf("lb2's reason %q", sb.Reason)
		}
	})
}

func TestPairTieOnPriority(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		// lb2 starts first and is alone for a while: it takes the role.
		// lb1 then returns with the same priority and a lower name, but
		// without preempt it stays standby.
		c1, c2 := nw.listen(), nw.listen()
		n2 := startNode(t, c2, c1.addr, nodeSpec{name: "lb2", priority: 100})
		defer n2.stop()
		n2.expectRole(t, Standby, startup)
		if d := n2.expectRole(t, Active, 2*deadAfter); d != deadAfter {
			t.Errorf("alone, active after %v, want dead_after %v", d, deadAfter)
		}
		n1 := startNode(t, c1, c2.addr, nodeSpec{name: "lb1", priority: 100})
		defer n1.stop()
		n1.expectRole(t, Standby, startup)
		n1.expectQuiet(t, 3*deadAfter)
		n2.expectQuiet(t, 0)
	})
}

// TestFailover: lb1 is cut off (a crash, as far as lb2 can tell); lb2 takes
// over dead_after after the last heartbeat it heard. When lb1 comes back
// (still active: it heard nobody), the split heals: lb2 steps down and
// ends its sessions.
func TestFailover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		na, nb := startPair(t, newMemNet(), nodeSpec{name: "lb1", priority: 100},
			nodeSpec{name: "lb2", priority: 50, svc: &fakeService{sessions: 3}})
		defer na.stop()
		defer nb.stop()
		time.Sleep(interval / 2) // halfway between two heartbeats
		na.conn.cut.Store(true)
		d := nb.expectRole(t, Active, 2*deadAfter)
		if d <= deadAfter-interval || d > deadAfter {
			t.Errorf("lb2 took over after %v, want within (%v, %v]", d, deadAfter-interval, deadAfter)
		}
		if open, _, _, _ := nb.svc.state(); !open {
			t.Error("lb2 active without listeners")
		}
		if !strings.Contains(nb.logs.String(), `msg="peer lost" node=lb2 peer=lb1`) {
			t.Errorf("no peer lost line:\n%s", nb.logs)
		}

		na.conn.cut.Store(false)
		if d := nb.expectRole(t, Standby, deadAfter); d > interval {
			t.Errorf("split healed after %v, want within one interval", d)
		}
		if open, _, closes, ended := nb.svc.state(); open || closes != 1 || ended != 1 {
			t.Errorf("lb2 stepped down: open %v, closes %d, sessions ended %d times", open, closes, ended)
		}
		if !strings.Contains(nb.logs.String(), "sessions_ended=3") {
			t.Errorf("step-down does not log the ended sessions:\n%s", nb.logs)
		}
		na.expectQuiet(t, 3*deadAfter) // lb1 never stepped down
	})
}

// TestGracefulStop: a node that stops says so, and the standby takes over
// at once. The leaving node closes its listeners but leaves its sessions
// to the server's shutdown.
func TestGracefulStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		na, nb := startPair(t, newMemNet(), nodeSpec{name: "lb1", priority: 100}, nodeSpec{name: "lb2", priority: 50})
		defer nb.stop()
		time.Sleep(interval / 2)
		start := time.Now()
		na.stop()
		na.expectRole(t, Standby, startup)
		if open, _, closes, ended := na.svc.state(); open || closes != 1 || ended != 0 {
			t.Errorf("lb1 stopped: open %v, closes %d, sessions ended %d times (want 0)", open, closes, ended)
		}
		nb.expectRole(t, Active, deadAfter)
		if d := time.Since(start); d != 0 {
			t.Errorf("lb2 took over %v after lb1 left, want at once", d)
		}
		if !strings.Contains(nb.logs.String(), `msg="peer leaving"`) {
			t.Errorf("no peer leaving line:\n%s", nb.logs)
		}
	})
}

func TestPreempt(t *testing.T) {
	for _, preempt := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[preempt]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				nw := newMemNet()
				cl, ch := nw.listen(), nw.listen()
				// The lower one runs alone and becomes active.
				lo := startNode(t, cl, ch.addr, nodeSpec{name: "lb2", priority: 50})
				defer lo.stop()
				lo.expectRole(t, Standby, startup)
				lo.expectRole(t, Active, 2*deadAfter)
				// The higher one returns.
				hi := startNode(t, ch, cl.addr, nodeSpec{name: "lb1", priority: 100, preempt: preempt})
				defer hi.stop()
				hi.expectRole(t, Standby, startup)
				if !preempt {
					hi.expectQuiet(t, 5*deadAfter)
					lo.expectQuiet(t, 0)
					if st := hi.Status(); st.Role != "standby" || !strings.Contains(st.Reason, "lb2 is active") {
						t.Errorf("lb1 status %+v", st)
					}
					return
				}
				if d := hi.expectRole(t, Active, deadAfter); d != 0 {
					t.Errorf("lb1 preempted after %v, want at once", d)
				}
				if d := lo.expectRole(t, Standby, deadAfter); d != 0 {
					t.Errorf("lb2 stepped down after %v, want at once", d)
				}
				hi.expectQuiet(t, 5*deadAfter)
				lo.expectQuiet(t, 0)
			})
		})
	}
}

// TestForgedAndReplayedIgnored: while lb1 is cut off, a replayer of lb1's
// real heartbeats tries to keep lb2 standby; it does not delay the
// takeover. Then a forger without the secret claims to be a higher-ranked
// active lb1; lb2 stays active. Both are counted, and logged at most once
// per logEvery.
func TestForgedAndReplayedIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		ca, cb := nw.listen(), nw.listen()
		var mu sync.Mutex
		var captured [][]byte
		tap := func(b []byte) { mu.Lock(); captured = append(captured, b); mu.Unlock() }
		cb.tap.Store(&tap)
		na, nb := startNode(t, ca, cb.addr, nodeSpec{name: "lb1", priority: 100}), startNode(t, cb, ca.addr, nodeSpec{name: "lb2", priority: 50})
		defer na.stop()
		defer nb.stop()
		na.expectRole(t, Standby, startup)
		na.expectRole(t, Active, deadAfter)
		nb.expectRole(t, Standby, startup)
		nb.expectQuiet(t, 2*deadAfter)
		cb.tap.Store(nil)
		mu.Lock()
		old := captured
		mu.Unlock()

		// every sends what next returns to lb2 every period until stopped.
		every := func(period time.Duration, next func(i int) []byte) (stop func()) {
			c := nw.listen()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					c.WriteTo(next(i), cb.addr)
					select {
					case <-ctx.Done():
						return
					case <-time.After(period):
					}
				}
			}()
			return func() { cancel(); <-done }
		}

		stopReplay := every(interval/3, func(i int) []byte { return old[i%len(old)] })
		na.conn.cut.Store(true)
		if d := nb.expectRole(t, Active, 2*deadAfter); d > deadAfter {
			t.Errorf("takeover after %v despite the replays, want at most %v", d, deadAfter)
		}
		stopReplay()
		if p := nb.Status().Peer; p.Rejected == 0 || !strings.Contains(p.LastError, "replayed") {
			t.Errorf("replays not refused as such: %+v", p)
		}

		stopForge := every(interval/2, func(i int) []byte {
			m := Message{Node: "lb1", Priority: 1000, Role: Active, Epoch: time.Now().UnixNano(), Seq: uint64(i + 1), Sent: time.Now()}
			b, _ := m.Encode(nil, []byte("guessed secret"))
			return b
		})
		nb.expectQuiet(t, 25*time.Second)
		stopForge()
		p := nb.Status().Peer
		if p.Rejected < 250 || !strings.Contains(p.LastError, "MAC does not match") {
			t.Errorf("forgeries not refused: %+v", p)
		}
		logs := nb.logs.String()
		if n := strings.Count(logs, "peer heartbeat rejected"); n < 2 || n > 4 || !strings.Contains(logs, "suppressed=") {
			t.Errorf("%d rejection lines in about 26s, want one per %v with a count of the others:\n%s", n, logEvery, logs)
		}
	})
}

// TestOwnNameIgnored: a node whose peer address is itself hears only its
// own heartbeats, refuses them, and is active after dead_after.
func TestOwnNameIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newMemNet().listen()
		n := startNode(t, c, c.addr, nodeSpec{name: "lb1", priority: 100})
		defer n.stop()
		n.expectRole(t, Standby, startup)
		if d := n.expectRole(t, Active, 2*deadAfter); d != deadAfter {
			t.Errorf("active after %v, want %v", d, deadAfter)
		}
		if p := n.Status().Peer; p.Rejected == 0 || !strings.Contains(p.LastError, "own node name") || p.Node != "" {
			t.Errorf("peer status %+v", p)
		}
	})
}

// TestListenersRetry: while the listeners do not open (the old active one
// still holds the port), the node keeps trying with backoff, and reports
// the role applied only once they are open.
func TestListenersRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newMemNet().listen()
		svc := &fakeService{failOpens: 3}
		n := startNode(t, c, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}, nodeSpec{name: "lb1", priority: 1, svc: svc})
		defer n.stop()
		n.expectRole(t, Standby, startup)
		n.expectRole(t, Active, 3*deadAfter)
		// Attempts at dead_after, +interval, +2 interval, +4 interval.
		if _, opens, _, _ := svc.state(); opens != 4 {
			t.Errorf("%d attempts, want 4", opens)
		}
		if got, want := time.Since(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)), discardWindow+deadAfter+7*interval; got != want {
			t.Errorf("open after %v, want %v", got, want)
		}
		if !strings.Contains(n.logs.String(), "address already in use") {
			t.Errorf("listen failure not logged:\n%s", n.logs)
		}
	})
}

func TestNewRefuses(t *testing.T) {
	base := config.PeerConfig{Node: "lb1", SecretFile: "/nonexistent/peer.secret",
		Interval: config.Duration{Duration: interval}, DeadAfter: config.Duration{Duration: deadAfter}}
	if _, err := New(&base, Options{}); err == nil || !strings.Contains(err.Error(), "read secret") {
		t.Errorf("missing secret file: %v", err)
	}
	long := base
	long.Node = strings.Repeat("n", 256)
	if _, err := New(&long, Options{Secret: testSecret}); err == nil {
		t.Error("256-byte node name accepted")
	}
	big := base
	big.Priority = 1 << 40
	if _, err := New(&big, Options{Secret: testSecret}); err == nil {
		t.Error("priority beyond 32 bits accepted")
	}
	slow := base
	slow.DeadAfter = slow.Interval
	if _, err := New(&slow, Options{Secret: testSecret}); err == nil {
		t.Error("dead_after = interval accepted")
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ content, want, err string }{
		{"  s3cret\n", "s3cret", ""},
		{" \n\t", "", "empty"},
	} {
		path := dir + "/secret"
		if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadSecret(path)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v", c.content, err)
			}
			continue
		}
		if err != nil || string(got) != c.want {
			t.Errorf("%q: %q, %v", c.content, got, err)
		}
	}
}

// TestRunFailsToListen: Run reports a [peer] listen address it cannot
// bind, and switches nothing.
func TestRunFailsToListen(t *testing.T) {
	cfg := &config.PeerConfig{Node: "lb1", Listen: "256.0.0.1:7946", Address: "127.0.0.1:7947",
		Interval: config.Duration{Duration: interval}, DeadAfter: config.Duration{Duration: deadAfter}}
	svc := &fakeService{}
	n, err := New(cfg, Options{Secret: testSecret, Service: svc, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "peer: listen") {
		t.Errorf("Run: %v", err)
	}
	if _, opens, _, _ := svc.state(); opens != 0 {
		t.Error("listeners opened")
	}
}
