package routing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

// mailPolicies is the usual setup: sticky IMAP, round-robin POP3 and SMTP.
var mailPolicies = [numProtocols]Policy{Sticky, RoundRobin, RoundRobin}

var allProtocols = [numProtocols]bool{true, true, true}

func spec(name string, weight int) BackendSpec {
	return BackendSpec{Name: name, Weight: weight, Serves: allProtocols}
}

// specs returns n backends b0..b(n-1) of weight 1.
func specs(n int) []BackendSpec {
	var out []BackendSpec
	for i := range n {
		out = append(out, spec(fmt.Sprintf("b%d", i), 1))
	}
	return out
}

// newPool builds a pool on a fake clock; opts.Table, when nil, is a
// MemTable on that clock.
func newPool(t testing.TB, opts Options, backends []BackendSpec) (*Pool, *clock) {
	t.Helper()
	c := newClock()
	if opts.Table == nil {
		opts.Table = NewMemTable(c.now)
	}
	p, err := NewPool(opts, backends)
	if err != nil {
		t.Fatal(err)
	}
	return p, c
}

func acquire(t testing.TB, p *Pool, proto Protocol, user string, exclude ...*Backend) *Lease {
	t.Helper()
	l, err := p.Acquire(context.Background(), proto, user, exclude...)
	if err != nil {
		t.Fatalf("Acquire(%v, %q): %v", proto, user, err)
	}
	return l
}

// hashPick is where rendezvous hashing alone puts user.
func hashPick(p *Pool, proto Protocol, user string) *Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rendezvous(proto, user, nil)
}

// takeDown reports fall failures so b goes down for proto.
func takeDown(t testing.TB, p *Pool, b *Backend, proto Protocol) {
	t.Helper()
	for range p.opts.Fall {
		p.Observe(b, proto, false, "refused")
	}
	if s := p.State(b, proto); s != Down {
		t.Fatalf("%s %v is %v after %d failures, want down", b.Name, proto, s, p.opts.Fall)
	}
}

func bringUp(t testing.TB, p *Pool, b *Backend, proto Protocol) {
	t.Helper()
	for range p.opts.Rise {
		p.Observe(b, proto, true, "ok")
	}
	if s := p.State(b, proto); s == Down {
		t.Fatalf("%s %v still down after %d successes", b.Name, proto, p.opts.Rise)
	}
}

// userOn finds a user that hashing puts on want.
func userOn(t testing.TB, p *Pool, want *Backend) string {
	t.Helper()
	for i := range 10000 {
		u := fmt.Sprintf("user%d@example.org", i)
		if hashPick(p, IMAP, u) == want {
			return u
		}
	}
	t.Fatalf("no user hashes to %s", want.Name)
	return ""
}

// killCounter counts OnKill callbacks.
type killCounter struct {
	mu sync.Mutex
	n  int
}

func (k *killCounter) watch(l *Lease) *Lease {
	l.OnKill(func() { k.mu.Lock(); k.n++; k.mu.Unlock() })
	return l
}

func (k *killCounter) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

func TestStickyConcurrentAcquire(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	const n = 10
	var wg sync.WaitGroup
	got := make(chan *Lease, n)
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			l, err := p.Acquire(context.Background(), IMAP, "alice@example.org")
			if err != nil {
				errs <- err
				return
			}
			got <- l
		})
	}
	wg.Wait()
	close(got)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var on *Backend
	for l := range got {
		if on == nil {
			on = l.Backend
		}
		if l.Backend != on {
			t.Fatalf("alice split over %s and %s", on.Name, l.Backend.Name)
		}
	}
	if on.Sessions() != n {
		t.Fatalf("%s has %d sessions, want %d", on.Name, on.Sessions(), n)
	}
	if b, live, _ := lookupPool(p, "alice@example.org"); b != on.Name || live != n {
		t.Fatalf("table says %s/%d, want %s/%d", b, live, on.Name, n)
	}
}

func TestStickySpread(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	count := map[string]int{}
	for i := range 300 {
		l := acquire(t, p, IMAP, fmt.Sprintf("user%d@example.org", i))
		count[l.Backend.Name]++
	}
	for _, b := range p.Backends() {
		if n := count[b.Name]; n > 120 || n == 0 {
			t.Errorf("%s holds %d of 300 users, want at most 40%%", b.Name, n)
		}
	}
	t.Logf("spread %v", count)
}

func TestLingerOutlivesHashChange(t *testing.T) {
	p, c := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	b0, b1, b2 := p.Backends()[0], p.Backends()[1], p.Backends()[2]
	// A user on b0 whom hashing sends elsewhere once b1 and b2 weigh 50.
	heavy, _ := newPool(t, Options{Policies: mailPolicies}, []BackendSpec{spec("b0", 1), spec("b1", 50), spec("b2", 50)})
	var user string
	for i := range 10000 {
		u := fmt.Sprintf("user%d@example.org", i)
		if hashPick(p, IMAP, u) == b0 && hashPick(heavy, IMAP, u).Name != "b0" {
			user = u
			break
		}
	}
	if user == "" {
		t.Fatal("no suitable user")
	}
	acquire(t, p, IMAP, user).Release()
	p.SetWeight(b1, 50)
	p.SetWeight(b2, 50)
	c.advance(time.Minute - time.Second)
	l := acquire(t, p, IMAP, user)
	if l.Backend != b0 {
		t.Fatalf("returning within linger went to %s, want b0", l.Backend.Name)
	}
	l.Release()
	c.advance(time.Minute)
	l = acquire(t, p, IMAP, user)
	if want := hashPick(p, IMAP, user); l.Backend != want || want == b0 {
		t.Fatalf("after linger went to %s, want hashing's %s (not b0)", l.Backend.Name, want.Name)
	}
}

func TestPins(t *testing.T) {
	p, c := newPool(t, Options{
		Policies: mailPolicies, Linger: time.Minute,
		Pins: map[string]string{"pinned@example.org": "b2"},
	}, specs(3))
	b2 := p.Backend("b2")
	// Pins win over hashing, whatever hashing says.
	if l := acquire(t, p, IMAP, "pinned@example.org"); l.Backend != b2 {
		t.Fatalf("pinned user went to %s, want b2", l.Backend.Name)
	} else {
		l.Release()
	}
	c.advance(time.Hour)

	// While the pin is draining the user goes by hashing; once it is back,
	// a live lease elsewhere still wins over the pin.
	p.SetDraining(b2, true)
	first := acquire(t, p, IMAP, "pinned@example.org")
	if first.Backend == b2 {
		t.Fatal("pinned user went to its draining pin")
	}
	p.SetDraining(b2, false)
	second := acquire(t, p, IMAP, "pinned@example.org")
	if second.Backend != first.Backend {
		t.Fatalf("pin split the user: %s and %s", first.Backend.Name, second.Backend.Name)
	}
	first.Release()
	second.Release()
	c.advance(time.Hour)
	if l := acquire(t, p, IMAP, "pinned@example.org"); l.Backend != b2 {
		t.Fatalf("with no lease the pinned user went to %s, want b2", l.Backend.Name)
	}
}

func TestDraining(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	b0 := p.Backend("b0")
	alice := userOn(t, p, b0)
	live := acquire(t, p, IMAP, alice)
	p.SetDraining(b0, true)
	if s := p.State(b0, IMAP); s != Draining {
		t.Fatalf("state %v, want draining", s)
	}
	for i := range 100 {
		if l := acquire(t, p, IMAP, fmt.Sprintf("new%d", i)); l.Backend == b0 {
			t.Fatalf("new user %d went to draining b0", i)
		}
		if l := acquire(t, p, POP3, fmt.Sprintf("pop%d", i)); l.Backend == b0 {
			t.Fatalf("new POP3 user %d went to draining b0", i)
		}
	}
	for _, proto := range []Protocol{IMAP, POP3, IMAP} {
		if l := acquire(t, p, proto, alice); l.Backend != b0 {
			t.Fatalf("live user's %v session went to %s, want draining b0", proto, l.Backend.Name)
		} else {
			l.Release()
		}
	}
	live.Release()
	// Lingering on a draining backend is not a reason to go back.
	if l := acquire(t, p, IMAP, alice); l.Backend == b0 {
		t.Fatal("lingering user went back to draining b0")
	}
}

func TestDownKillsAndMoves(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute, Fall: 3}, specs(3))
	b0 := p.Backend("b0")
	alice, bob := userOn(t, p, b0), ""
	for i := range 10000 {
		if u := fmt.Sprintf("bob%d", i); hashPick(p, IMAP, u) == b0 {
			bob = u
			break
		}
	}
	var kills killCounter
	a1 := kills.watch(acquire(t, p, IMAP, alice))
	a2 := kills.watch(acquire(t, p, IMAP, alice))
	bImap := kills.watch(acquire(t, p, IMAP, bob))
	bPop := kills.watch(acquire(t, p, POP3, bob)) // follows bob's IMAP lease
	if a1.Backend != b0 || a2.Backend != b0 || bPop.Backend != b0 {
		t.Fatal("setup: not all on b0")
	}
	bImap.Release()
	for i := range 2 {
		if p.Observe(b0, IMAP, false, "refused") {
			t.Fatalf("flipped after %d failures, fall is 3", i+1)
		}
	}
	if kills.count() != 0 || b0.Sessions() != 3 {
		t.Fatalf("before going down: %d kills, %d sessions", kills.count(), b0.Sessions())
	}
	if !p.Observe(b0, IMAP, false, "refused") {
		t.Fatal("no flip after 3 failures")
	}
	// Only the IMAP leases die: b0 still serves POP3.
	if kills.count() != 2 || b0.Sessions() != 1 {
		t.Fatalf("after going down: %d kills, %d sessions, want 2 and 1", kills.count(), b0.Sessions())
	}
	a1.Release()
	a2.Release()
	a2.Release() // harmless
	l := acquire(t, p, IMAP, alice)
	if l.Backend == b0 {
		t.Fatal("alice went to down b0")
	}
	// Bob still holds a working POP3 session on b0, down for IMAP: his new
	// IMAP session fails rather than kill it, until the POP3 session ends.
	if _, err := p.Acquire(context.Background(), IMAP, bob); err != ErrNoBackend {
		t.Fatalf("bob's IMAP while his POP3 works on b0: %v, want ErrNoBackend", err)
	}
	if kills.count() != 2 || b0.Sessions() != 1 {
		t.Fatalf("a working POP3 session was killed: %d kills, %d sessions on b0", kills.count(), b0.Sessions())
	}
	// When b0 goes down for POP3 too, that session dies and bob moves.
	for range 3 {
		p.Observe(b0, POP3, false, "refused")
	}
	m := acquire(t, p, IMAP, bob)
	if m.Backend == b0 {
		t.Fatal("bob went to down b0")
	}
	if kills.count() != 3 || b0.Sessions() != 0 {
		t.Fatalf("after moving bob: %d kills, %d sessions on b0, want 3 and 0", kills.count(), b0.Sessions())
	}
	if pop := acquire(t, p, POP3, bob); pop.Backend != m.Backend {
		t.Fatalf("bob's POP3 went to %s, his IMAP is on %s", pop.Backend.Name, m.Backend.Name)
	}

	// b0 comes back: hashing says b0 for both, but they are live elsewhere.
	bringUp(t, p, b0, IMAP)
	if n := acquire(t, p, IMAP, alice); n.Backend != l.Backend {
		t.Fatalf("alice split: %s and %s", l.Backend.Name, n.Backend.Name)
	}
	if n := acquire(t, p, IMAP, bob); n.Backend != m.Backend {
		t.Fatalf("bob split: %s and %s", m.Backend.Name, n.Backend.Name)
	}
}

// A killed session may call Release long after the kill, when its user has
// moved away and back. That late Release must not end the user's newer
// session in the table, or the user looks idle and can be split.
func TestLateReleaseOfKilledLease(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute, Fall: 1, Rise: 1}, specs(2))
	b0, b1 := p.Backend("b0"), p.Backend("b1")
	u := userOn(t, p, b0)
	old := acquire(t, p, IMAP, u)
	takeDown(t, p, b0, IMAP) // kills old; its session has not released yet
	moved := acquire(t, p, IMAP, u)
	if moved.Backend != b1 {
		t.Fatalf("moved to %s, want b1", moved.Backend.Name)
	}
	moved.Release() // lingers on b1
	bringUp(t, p, b0, IMAP)
	takeDown(t, p, b1, IMAP)
	back := acquire(t, p, IMAP, u)
	if back.Backend != b0 {
		t.Fatalf("back on %s, want b0", back.Backend.Name)
	}
	old.Release() // the first session finally ends
	if b, live, _ := lookupPool(p, u); b != "b0" || live != 1 {
		t.Fatalf("table says %s/%d, want b0/1", b, live)
	}
	for range 10 { // round-robin POP3 must follow the live IMAP lease
		if l := acquire(t, p, POP3, u); l.Backend != b0 {
			t.Fatalf("POP3 went to %s while IMAP is live on b0", l.Backend.Name)
		}
	}
}

func TestExclude(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	b0 := p.Backend("b0")
	u := userOn(t, p, b0)
	// No lease yet: an excluded backend is skipped.
	l := acquire(t, p, IMAP, u, b0)
	if l.Backend == b0 {
		t.Fatal("went to excluded b0")
	}
	// A live session on the excluded backend: fail rather than split.
	if _, err := p.Acquire(context.Background(), IMAP, u, l.Backend); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("excluding the live backend: err %v, want ErrNoBackend", err)
	}
	if _, err := p.Acquire(context.Background(), POP3, u, l.Backend); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("POP3 excluding the live backend: err %v, want ErrNoBackend", err)
	}
	if l.Backend.Sessions() != 1 {
		t.Fatalf("%d sessions, want 1", l.Backend.Sessions())
	}
	if _, live, _ := lookupPool(p, u); live != 1 {
		t.Fatalf("failed acquires changed the table: live %d", live)
	}
	// Excluding all of them.
	if _, err := p.Acquire(context.Background(), IMAP, "other", p.Backends()...); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("all excluded: err %v", err)
	}
	if _, err := p.Acquire(context.Background(), SMTP, "", p.Backends()...); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("SMTP all excluded: err %v", err)
	}
}

func TestNoBackend(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Fall: 1}, specs(2))
	for _, b := range p.Backends() {
		takeDown(t, p, b, IMAP)
	}
	if _, err := p.Acquire(context.Background(), IMAP, "u"); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err %v, want ErrNoBackend", err)
	}
	if l := acquire(t, p, POP3, "u"); l == nil {
		t.Fatal("POP3 is up")
	}
	q, _ := newPool(t, Options{}, nil)
	if _, err := q.Acquire(context.Background(), IMAP, "u"); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("empty pool: err %v", err)
	}
}

func countPicks(t *testing.T, p *Pool, proto Protocol, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		got[acquire(t, p, proto, fmt.Sprintf("rr%d", i)).Backend.Name]++
	}
	return got
}

func TestRoundRobin(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies}, specs(3))
	if got := countPicks(t, p, POP3, 99); !equalCounts(got, 33, 33, 33) {
		t.Fatalf("99 picks: %v, want 33 each", got)
	}
	p, _ = newPool(t, Options{Policies: mailPolicies}, specs(3))
	if got := countPicks(t, p, POP3, 100); !equalCounts(got, 34, 33, 33) {
		t.Fatalf("100 picks: %v, want 34/33/33", got)
	}
	// Strict rotation, not bursts.
	p, _ = newPool(t, Options{Policies: mailPolicies}, specs(3))
	var seq []string
	for range 6 {
		seq = append(seq, acquire(t, p, SMTP, "").Backend.Name)
	}
	if fmt.Sprint(seq[:3]) != fmt.Sprint(seq[3:]) || seq[0] == seq[1] || seq[1] == seq[2] || seq[0] == seq[2] {
		t.Fatalf("sequence %v is not a rotation", seq)
	}
	p, _ = newPool(t, Options{Policies: mailPolicies, Fall: 2}, specs(3))
	takeDown(t, p, p.Backend("b1"), POP3)
	if got := countPicks(t, p, POP3, 100); got["b0"] != 50 || got["b2"] != 50 {
		t.Fatalf("with b1 down: %v, want 50/0/50", got)
	}
	// Weights 1, 2, 1: smooth, so the heavy one never gets three in a row.
	p, _ = newPool(t, Options{Policies: mailPolicies}, []BackendSpec{spec("b0", 1), spec("b1", 2), spec("b2", 1)})
	got, run := map[string]int{}, 0
	for i := range 100 {
		b := acquire(t, p, SMTP, "").Backend.Name
		got[b]++
		if b == "b1" {
			run++
		} else {
			run = 0
		}
		if run > 2 {
			t.Fatalf("pick %d: b1 three times in a row", i)
		}
	}
	if got["b0"] != 25 || got["b1"] != 50 || got["b2"] != 25 {
		t.Fatalf("weighted: %v, want 25/50/25", got)
	}
}

func equalCounts(got map[string]int, want ...int) bool {
	var g []int
	for _, n := range got {
		g = append(g, n)
	}
	slices.Sort(g)
	slices.Sort(want)
	return slices.Equal(g, want)
}

func TestLeastConn(t *testing.T) {
	opts := Options{Policies: [numProtocols]Policy{Sticky, LeastConn, LeastConn}}
	p, _ := newPool(t, opts, specs(3))
	var leases []*Lease
	for range 30 {
		leases = append(leases, acquire(t, p, SMTP, ""))
	}
	for _, b := range p.Backends() {
		if b.Sessions() != 10 {
			t.Fatalf("%s has %d sessions, want 10", b.Name, b.Sessions())
		}
	}
	// Free three on b1: the next three go there.
	freed := 0
	for _, l := range leases {
		if l.Backend.Name == "b1" && freed < 3 {
			l.Release()
			freed++
		}
	}
	for range 3 {
		if l := acquire(t, p, SMTP, ""); l.Backend.Name != "b1" {
			t.Fatalf("went to %s, b1 has the fewest sessions", l.Backend.Name)
		}
	}
	// Users are balanced the same way, with weights.
	p, _ = newPool(t, opts, []BackendSpec{spec("b0", 1), spec("b1", 2), spec("b2", 1)})
	for i := range 40 {
		acquire(t, p, POP3, fmt.Sprintf("u%d", i))
	}
	for name, want := range map[string]int{"b0": 10, "b1": 20, "b2": 10} {
		if n := p.Backend(name).Sessions(); n != want {
			t.Fatalf("%s has %d sessions, want %d", name, n, want)
		}
	}
}

func TestPOP3FollowsIMAP(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(3))
	for i := range 20 {
		u := fmt.Sprintf("user%d", i)
		imap := acquire(t, p, IMAP, u)
		for range 5 {
			if l := acquire(t, p, POP3, u); l.Backend != imap.Backend {
				t.Fatalf("%s: POP3 on %s, IMAP on %s", u, l.Backend.Name, imap.Backend.Name)
			}
			if l := acquire(t, p, SMTP, u); l.Backend != imap.Backend {
				t.Fatalf("%s: LMTP-like session on %s, IMAP on %s", u, l.Backend.Name, imap.Backend.Name)
			}
		}
	}
	// And the other way round: IMAP follows a live POP3 session.
	pop := acquire(t, p, POP3, "popfirst")
	for range 5 {
		if l := acquire(t, p, IMAP, "popfirst"); l.Backend != pop.Backend {
			t.Fatalf("IMAP on %s, POP3 on %s", l.Backend.Name, pop.Backend.Name)
		}
	}
}

func TestWeightShare(t *testing.T) {
	const users = 20000
	p, _ := newPool(t, Options{Policies: mailPolicies}, []BackendSpec{
		spec("b0", 1), spec("b1", 2), spec("b2", 1), spec("off", 0),
	})
	got := map[string]int{}
	for i := range users {
		l := acquire(t, p, IMAP, fmt.Sprintf("user%d@example.org", i))
		got[l.Backend.Name]++
		l.Release()
	}
	for name, share := range map[string]float64{"b0": 0.25, "b1": 0.5, "b2": 0.25, "off": 0} {
		if f := float64(got[name]) / users; f < share-0.02 || f > share+0.02 {
			t.Errorf("%s has %.3f of users, want %.2f±0.02", name, f, share)
		}
	}
	t.Logf("shares %v", got)
}

// The weighted score must rank backends of equal weight exactly as the
// equal-weight fast path does, so that weights going from equal to unequal
// elsewhere in the pool move no user between two backends of equal weight.
func TestRendezvousWeightedAgreesWithEqual(t *testing.T) {
	equal, _ := newPool(t, Options{Policies: mailPolicies}, specs(5))
	mixed, _ := newPool(t, Options{Policies: mailPolicies}, append(specs(5), spec("heavy", 7)))
	for _, b := range mixed.Backends()[:5] {
		mixed.SetWeight(b, 3)
	}
	mixed.SetDraining(mixed.Backend("heavy"), true) // unequal weights, same candidates
	if mixed.equalWeights() {
		t.Fatal("setup: weights look equal")
	}
	for i := range 5000 {
		u := fmt.Sprint(i)
		if a, b := hashPick(equal, IMAP, u), hashPick(mixed, IMAP, u); a.Name != b.Name {
			t.Fatalf("user %s: %s with equal weights, %s with the weighted score", u, a.Name, b.Name)
		}
	}
}

func TestKick(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute}, specs(2))
	b0 := p.Backend("b0")
	var kills killCounter
	var leases []*Lease
	for i := 0; len(leases) < 5; i++ {
		u := fmt.Sprintf("u%d", i)
		if hashPick(p, IMAP, u) == b0 {
			leases = append(leases, kills.watch(acquire(t, p, IMAP, u)))
			leases = append(leases, kills.watch(acquire(t, p, POP3, u)))
		}
	}
	leases = append(leases, kills.watch(acquire(t, p, SMTP, "")))
	want := b0.Sessions()
	if n := p.Kick(b0); n != want || n < 6 {
		t.Fatalf("Kick = %d, want %d", n, want)
	}
	// Kicked sessions stay live until they release: b0 is up, and their
	// connections may still be closing there.
	if kills.count() != want || b0.Sessions() != want {
		t.Fatalf("%d kills, %d sessions left, want %d and %d", kills.count(), b0.Sessions(), want, want)
	}
	if n := p.Kick(b0); n != 0 {
		t.Fatalf("second Kick = %d", n)
	}
	// OnKill after the kill runs at once; Release after it is harmless.
	late := false
	leases[0].OnKill(func() { late = true })
	if !late {
		t.Fatal("OnKill on a killed lease did not run")
	}
	for _, l := range leases {
		l.Release()
	}
	if b0.Sessions() != 0 {
		t.Fatalf("%d sessions after releases", b0.Sessions())
	}
	// The kicked users linger and come back to b0, which is still up.
	if l := acquire(t, p, IMAP, leases[0].User); l.Backend != b0 {
		t.Fatalf("kicked user went to %s", l.Backend.Name)
	}
}

func TestStatusAndUserSessions(t *testing.T) {
	var changes []string
	p, _ := newPool(t, Options{
		Policies: mailPolicies, Fall: 1, Rise: 1,
		OnStateChange: func(b *Backend, proto Protocol, s State, reason string) {
			changes = append(changes, fmt.Sprintf("%s/%v:%v:%s", b.Name, proto, s, reason))
		},
	}, []BackendSpec{
		{Name: "a", Weight: 1, Serves: [numProtocols]bool{IMAP: true, POP3: true}},
		{Name: "b", Weight: 2, Serves: allProtocols},
		{Name: "c", Weight: 1, Serves: allProtocols},
		{Name: "d", Weight: 1, Serves: allProtocols, Disabled: true},
	})
	a, b, c := p.Backend("a"), p.Backend("b"), p.Backend("c")
	p.SetDraining(b, true)
	p.SetDraining(c, true)
	p.Observe(c, POP3, false, "connection refused")
	p.Observe(c, POP3, false, "timeout")
	// Only a is open: u's sessions go there.
	acquire(t, p, IMAP, "u")
	acquire(t, p, POP3, "u")
	acquire(t, p, IMAP, "v")
	if _, err := p.Acquire(context.Background(), SMTP, ""); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("SMTP: %v, a does not serve it and the rest are closed", err)
	}
	st := p.Status()
	want := []BackendStatus{
		{Name: "a", State: "up", Weight: 1, Sessions: 3, Users: 2,
			Health: map[string]string{"imap": "up", "pop3": "up"}, Reason: map[string]string{}},
		{Name: "b", State: "draining", Draining: true, Weight: 2,
			Health: map[string]string{"imap": "up", "pop3": "up", "smtp": "up"}, Reason: map[string]string{}},
		{Name: "c", State: "down", Draining: true, Weight: 1,
			Health: map[string]string{"imap": "up", "pop3": "down", "smtp": "up"}, Reason: map[string]string{"pop3": "timeout"}},
		{Name: "d", State: "disabled", Weight: 1,
			Health: map[string]string{"imap": "up", "pop3": "up", "smtp": "up"}, Reason: map[string]string{}},
	}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Fatalf("Status:\n got %v\nwant %v", st, want)
	}
	if got, w := fmt.Sprint(p.UserSessions("u")), "[{a imap} {a pop3}]"; got != w {
		t.Fatalf("UserSessions(u) = %s, want %s", got, w)
	}
	if got := p.UserSessions("nobody"); len(got) != 0 {
		t.Fatalf("UserSessions(nobody) = %v", got)
	}
	if got, w := fmt.Sprint(changes), "[c/pop3:down:connection refused]"; got != w {
		t.Fatalf("state changes %s, want %s", got, w)
	}
	p.Observe(c, POP3, true, "ok")
	if got, w := changes[len(changes)-1], "c/pop3:draining:ok"; got != w {
		t.Fatalf("state change %s, want %s", got, w)
	}
	if got := p.State(a, SMTP); got != Disabled {
		t.Fatalf("a/smtp is %v, want disabled", got)
	}
}

func TestNewPoolErrors(t *testing.T) {
	if _, err := NewPool(Options{}, []BackendSpec{spec("x", 1), spec("x", 1)}); err == nil {
		t.Error("duplicate backend: no error")
	}
	if _, err := NewPool(Options{Pins: map[string]string{"u": "nope"}}, specs(1)); err == nil {
		t.Error("pin to unknown backend: no error")
	}
	p, err := NewPool(Options{Name: "p"}, []BackendSpec{spec("neg", -3)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "p" || p.Backend("neg") == nil || p.Backend("nope") != nil {
		t.Fatal("Name or Backend wrong")
	}
	if st := p.Status(); st[0].Weight != 0 {
		t.Errorf("negative weight kept as %d", st[0].Weight)
	}
	if _, err := p.Acquire(context.Background(), IMAP, "u"); !errors.Is(err, ErrNoBackend) {
		t.Errorf("weight-0 backend took a new user: %v", err)
	}
}

// A session sets OnKill just after Acquire while an operator kicks its
// backend: the callback must run exactly once, and without a data race.
func TestOnKillRacesKick(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies}, specs(1))
	b := p.Backends()[0]
	const n = 2000
	calls := make([]int32, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
				p.Kick(b)
			}
		}
	})
	leases := make([]*Lease, n)
	for i := range n {
		l, err := p.Acquire(context.Background(), IMAP, fmt.Sprint("u", i))
		if err != nil {
			t.Fatal(err)
		}
		leases[i] = l
		l.OnKill(func() { mu.Lock(); calls[i]++; mu.Unlock() })
	}
	close(done)
	wg.Wait()
	p.Kick(b)
	mu.Lock()
	defer mu.Unlock()
	for i, c := range calls {
		if c != 1 {
			t.Fatalf("lease %d: kill callback ran %d times", i, c)
		}
	}
}

// The bound that lets rendezvous skip most logarithms must never change
// its answer.
func TestRendezvousBoundIsExact(t *testing.T) {
	weights := []int{1, 2, 3, 5, 8, 1, 1, 13, 2, 7}
	var sp []BackendSpec
	for i, w := range weights {
		sp = append(sp, spec(fmt.Sprint("b", i), w))
	}
	p, _ := newPool(t, Options{Policies: mailPolicies}, sp)
	for i := range 100000 {
		u := fmt.Sprint("user", i)
		uh := hashString(u)
		var want *Backend
		var wantScore float64
		for _, b := range p.Backends() {
			h := mix(uh ^ b.seed)
			score := float64(b.weight) / -math.Log((float64(h>>11)+0.5)/(1<<53))
			if want == nil || score > wantScore {
				want, wantScore = b, score
			}
		}
		if got := hashPick(p, IMAP, u); got != want {
			t.Fatalf("%s: rendezvous says %s, the full computation %s", u, got.Name, want.Name)
		}
	}
}

// lookupPool is Pool.Lookup for tests of a MemTable, which never fails.
func lookupPool(p *Pool, user string) (string, int, bool) {
	b, live, ok, err := p.Lookup(context.Background(), user)
	if err != nil {
		panic(err)
	}
	return b, live, ok
}

// TestWeightZero (issue 10, point 8): weight 0 keeps a backend out of
// hashing only. A pin still brings its user there, so does a live
// session, and a pool of only weight-0 backends still serves its pinned
// users (and nobody else).
func TestWeightZero(t *testing.T) {
	p, c := newPool(t, Options{
		Policies: mailPolicies, Linger: time.Minute,
		Pins: map[string]string{"pinned@example.org": "spare"},
	}, []BackendSpec{spec("b0", 1), spec("spare", 0)})
	spare := p.Backend("spare")
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		l := acquire(t, p, proto, "pinned@example.org")
		if l.Backend != spare {
			t.Errorf("%v: pinned user went to %s, want its weight-0 pin", proto, l.Backend.Name)
		}
		l.Release()
	}
	for i := range 50 {
		u := fmt.Sprintf("user%d@example.org", i)
		if l := acquire(t, p, IMAP, u); l.Backend == spare {
			t.Fatalf("%s was hashed onto the weight-0 backend", u)
		} else {
			l.Release()
		}
	}
	// A live session holds its user there as well, pin or not.
	l := acquire(t, p, IMAP, "pinned@example.org")
	p.SetPin("pinned@example.org", nil)
	if l2 := acquire(t, p, IMAP, "pinned@example.org"); l2.Backend != spare {
		t.Errorf("user live on the weight-0 backend went to %s", l2.Backend.Name)
	} else {
		l2.Release()
	}
	l.Release()
	c.advance(time.Hour)

	only, _ := newPool(t, Options{
		Policies: mailPolicies,
		Pins:     map[string]string{"pinned@example.org": "spare"},
	}, []BackendSpec{spec("spare", 0)})
	if l, err := only.Acquire(context.Background(), IMAP, "pinned@example.org"); err != nil {
		t.Errorf("pool of weight-0 backends: pinned user refused: %v", err)
	} else {
		l.Release()
	}
	if _, err := only.Acquire(context.Background(), IMAP, "someone@example.org"); !errors.Is(err, ErrNoBackend) {
		t.Errorf("pool of weight-0 backends: unpinned user got %v, want ErrNoBackend", err)
	}
}
