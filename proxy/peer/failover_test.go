package peer

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeAddr is an addresser that records what the node does with the
// virtual addresses.
type fakeAddr struct {
	mu                       sync.Mutex
	held                     bool
	adds, removes, announced int
	witnessOK                atomic.Bool
	asked                    atomic.Int32
}

var _ addresser = (*fakeAddr)(nil)

func (f *fakeAddr) add() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = true
	f.adds++
	return nil
}

func (f *fakeAddr) remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = false
	f.removes++
	return nil
}

func (f *fakeAddr) announce() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.announced++
	return 1, nil
}

func (f *fakeAddr) witness(netip.Addr, time.Duration) bool {
	f.asked.Add(1)
	return f.witnessOK.Load()
}

func (f *fakeAddr) state() (held bool, announced int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, f.announced
}

// TestAddressFollowsRole: the address is removed at start (a crash may
// have left it), added and announced on becoming active, announced again
// on the schedule, and removed on stepping down and on shutdown.
func TestAddressFollowsRole(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		fa, fb := &fakeAddr{}, &fakeAddr{}
		na, nb := startPair(t, nw, nodeSpec{name: "lb1", priority: 100, addr: fa}, nodeSpec{name: "lb2", priority: 50, addr: fb})
		synctest.Wait()
		// startPair waited 3s after lb1 became active: the first burst is out.
		if held, n := fa.state(); !held || n != 1+len(announceGaps) || fa.removes != 1 {
			t.Errorf("active lb1: held %v, %d announcements, %d removes; want held, %d (the burst), 1 (at start)", held, n, fa.removes, 1+len(announceGaps))
		}
		if held, n := fb.state(); held || n != 0 || fb.removes != 1 {
			t.Errorf("standby lb2: held %v, %d announcements, %d removes", held, n, fb.removes)
		}
		time.Sleep(announceRefresh)
		if _, n := fa.state(); n != 2+len(announceGaps) {
			t.Errorf("%d announcements after the refresh, want %d", n, 2+len(announceGaps))
		}
		if st := na.Status(); st.Announcements != uint64(2+len(announceGaps)) || st.Applied != "active" || st.Takeovers != 1 {
			t.Errorf("status %+v", st)
		}
		na.stop()
		if held, _ := fa.state(); held {
			t.Error("lb1 kept the address after it stopped")
		}
		nb.expectRole(t, Active, interval)
		synctest.Wait()
		if held, _ := fb.state(); !held {
			t.Error("lb2 active without the address")
		}
	})
}

// TestLinkLossHandsOver: a node whose interface loses its link removes
// the address and tells its peer, which takes over within an interval
// rather than dead_after; when the link is back it stays standby.
func TestLinkLossHandsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		fa, fb := &fakeAddr{}, &fakeAddr{}
		na, nb := startPair(t, nw, nodeSpec{name: "lb1", priority: 100, addr: fa}, nodeSpec{name: "lb2", priority: 50, addr: fb})
		na.setLink(false)
		na.expectRole(t, Standby, interval)
		if held, _ := fa.state(); held {
			t.Error("lb1 kept the address on a dead link")
		}
		if d := nb.expectRole(t, Active, deadAfter); d > 0 {
			t.Errorf("lb2 took over after %v, want at once", d)
		}
		if st := na.Status(); st.LinkUp || !strings.Contains(st.Reason, "is down") {
			t.Errorf("lb1 status %+v", st)
		}
		na.setLink(true)
		na.expectQuiet(t, 3*deadAfter)
		nb.expectQuiet(t, deadAfter)
	})
}

// TestConflictWinnerAnnounces: with the heartbeat path cut both nodes are
// active; when it heals the higher-ranked one announces at once and the
// other removes the address.
func TestConflictWinnerAnnounces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		fa, fb := &fakeAddr{}, &fakeAddr{}
		na, nb := startPair(t, nw, nodeSpec{name: "lb1", priority: 100, addr: fa}, nodeSpec{name: "lb2", priority: 50, addr: fb})
		na.conn.cut.Store(true)
		nb.expectRole(t, Active, 2*deadAfter)
		time.Sleep(announceRefresh / 2) // past the first burst
		_, before := fa.state()
		na.conn.cut.Store(false)
		nb.expectRole(t, Standby, 2*interval)
		synctest.Wait()
		if _, after := fa.state(); after != before+1 {
			t.Errorf("the winner announced %d times on the heal, want 1 at once", after-before)
		}
		if held, _ := fb.state(); held {
			t.Error("the loser kept the address")
		}
		// The loser saw both active; the winner may not have (the loser's
		// step-down can reach it first).
		if nb.Status().Conflicts != 1 || na.Status().Conflicts > 1 {
			t.Errorf("conflicts counted: lb1 %d, lb2 %d; want lb2 1", na.Status().Conflicts, nb.Status().Conflicts)
		}
		na.expectQuiet(t, deadAfter)
	})
}

// TestWitnessGatesTakeover: a standby that loses its peer takes over only
// once the witness answers.
func TestWitnessGatesTakeover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		fb := &fakeAddr{}
		fb.witnessOK.Store(true)
		na, nb := startPair(t, nw, nodeSpec{name: "lb1", priority: 100}, nodeSpec{name: "lb2", priority: 50, addr: fb, witness: "192.0.2.1"})
		fb.witnessOK.Store(false)
		na.conn.cut.Store(true)
		nb.expectQuiet(t, 3*deadAfter)
		if fb.asked.Load() < 2 {
			t.Errorf("witness asked %d times while the peer was lost, want it asked again and again", fb.asked.Load())
		}
		if st := nb.Status(); !strings.Contains(st.Reason, "witness") {
			t.Errorf("lb2 reason %q", st.Reason)
		}
		fb.witnessOK.Store(true)
		nb.expectRole(t, Active, 2*interval)
	})
}

// TestSecondPath: with two heartbeat paths, losing one changes nothing;
// losing both is a lost peer.
func TestSecondPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nw := newMemNet()
		ca, cb, ca2, cb2 := nw.listen(), nw.listen(), nw.listen(), nw.listen()
		na := startNode(t, ca, cb.addr, nodeSpec{name: "lb1", priority: 100, conn2: ca2, peer2: cb2.addr})
		nb := startNode(t, cb, ca.addr, nodeSpec{name: "lb2", priority: 50, conn2: cb2, peer2: ca2.addr})
		na.expectRole(t, Standby, startup)
		nb.expectRole(t, Standby, startup)
		na.expectRole(t, Active, deadAfter)
		ca.cut.Store(true)
		nb.expectQuiet(t, 3*deadAfter)
		if st := nb.Status(); st.Peer.Rejected != 0 {
			t.Errorf("copies by the second path counted as rejected: %d (%s)", st.Peer.Rejected, st.Peer.LastError)
		}
		ca2.cut.Store(true)
		nb.expectRole(t, Active, 2*deadAfter)
	})
}

// TestStoppingNeverActivates: a role elected as the node stops is not
// applied.
func TestStoppingNeverActivates(t *testing.T) {
	for range 50 {
		svc := &fakeService{}
		n := &Node{opts: Options{Service: svc}, log: slog.New(slog.DiscardHandler), linkc: make(chan bool, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		want := make(chan Role, 1)
		want <- Active
		n.actuate(ctx, want, nil)
		svc.mu.Lock()
		opens := svc.opens
		svc.mu.Unlock()
		if opens != 0 {
			t.Fatal("the listeners opened after the node was told to stop")
		}
	}
}
