package routing

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

var churnSeed = flag.Uint64("routing.seed", 0, "seed for TestChurn; 0 picks one (it is logged)")

const (
	churnUsers    = 1000
	churnBackends = 4
	churnSteps    = 100_000
	churnLinger   = time.Minute
)

// churnLease is one session as the test sees it.
type churnLease struct {
	l      *Lease
	id     int
	user   int // -1: not tied to a user (SMTP)
	b      int
	dead   bool // killed or released: no longer live
	kicked bool // told to end; live until released
}

// churn drives a pool through random steps and keeps its own model of what
// is live, updated incrementally (Release by the test, kills through
// OnKill), so every invariant is checked after every step in O(1) plus the
// users the step touched.
type churn struct {
	t    *testing.T
	seed uint64
	step int
	op   string

	p        *Pool
	clk      *clock
	tab      *MemTable
	rng      *rand.Rand
	backends []*Backend
	users    []string

	// The model.
	on       [][churnBackends]int32 // per user: live leases per backend
	nOn      []int8                 // per user: backends with a live lease
	split    int                    // users with live leases on two backends
	perB     [churnBackends]int     // live leases per backend
	live     []*churnLease          // may hold dead ones, dropped when picked
	dying    []*churnLease          // killed, their sessions not yet released
	killed   []*churnLease          // killed during this step
	touched  []int                  // users whose table entry this step may change
	kicking  bool                   // a Kick is running: kill callbacks are kicks
	down     [churnBackends][numProtocols]bool
	draining [churnBackends]bool
	weight   [churnBackends]int
	nextID   int

	// Coverage, logged at the end.
	moved, refused, stayedDraining, lingerBack, kills, peak int
}

func (m *churn) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("step %d (%s), -routing.seed=%d: "+format, append([]any{m.step, m.op, m.seed}, args...)...)
}

func (m *churn) add(cl *churnLease) {
	m.perB[cl.b]++
	if cl.user < 0 {
		return
	}
	u := cl.user
	m.on[u][cl.b]++
	if m.on[u][cl.b] == 1 {
		m.nOn[u]++
		if m.nOn[u] == 2 {
			m.split++
		}
	}
}

func (m *churn) drop(cl *churnLease) {
	cl.dead = true
	m.perB[cl.b]--
	if cl.user < 0 {
		return
	}
	u := cl.user
	m.on[u][cl.b]--
	if m.on[u][cl.b] == 0 {
		if m.nOn[u] == 2 {
			m.split--
		}
		m.nOn[u]--
	}
	m.touched = append(m.touched, u)
}

// liveOn returns the backend user u has live leases on, or -1.
func (m *churn) liveOn(u int) int {
	for b, n := range m.on[u] {
		if n > 0 {
			return b
		}
	}
	return -1
}

// servedOn reports whether user u has a live lease on backend b whose
// protocol b still serves.
func (m *churn) servedOn(u, b int) bool {
	for _, cl := range m.live {
		if !cl.dead && cl.user == u && cl.b == b && !m.down[b][cl.l.Proto] {
			return true
		}
	}
	return false
}

func (m *churn) open(b int, proto Protocol) bool {
	return !m.down[b][proto] && !m.draining[b] && m.weight[b] > 0
}

func (m *churn) acquire(proto Protocol, u int) {
	user, ex := "", -1
	if u >= 0 {
		user = m.users[u]
	}
	var exclude []*Backend
	if m.rng.IntN(10) == 0 {
		ex = m.rng.IntN(churnBackends)
		exclude = m.backends[ex : ex+1]
	}
	had, bound := -1, -1
	if u >= 0 {
		had, bound = m.liveOn(u), m.lastOn(u)
		m.touched = append(m.touched, u)
	}
	var want bool
	switch {
	case had >= 0 && !m.down[had][proto]:
		want = had != ex
	case had >= 0 && m.servedOn(u, had):
		want = false // a working session of another protocol holds the user
	default:
		for b := range churnBackends {
			want = want || (b != ex && m.open(b, proto))
		}
	}
	l, err := m.p.Acquire(context.Background(), proto, user, exclude...)
	if (err == nil) != want {
		m.fatalf("%v for user %d (live on %d, exclude %d): err %v, want success %v", proto, u, had, ex, err, want)
	}
	if err != nil {
		m.refused++
		return
	}
	b := l.Backend.index
	switch {
	case had >= 0 && b != had:
		m.moved++
	case had >= 0 && m.draining[b]:
		m.stayedDraining++
	case had < 0 && b == bound:
		m.lingerBack++
	}
	switch {
	case b == ex:
		m.fatalf("went to excluded backend %d", b)
	case m.down[b][proto]:
		m.fatalf("user %d went to backend %d, down for %v", u, b, proto)
	case had >= 0 && !m.down[had][proto] && b != had:
		m.fatalf("user %d live on %d went to %d", u, had, b)
	case (m.draining[b] || m.weight[b] == 0) && b != had:
		m.fatalf("user %d (live on %d) went to closed backend %d (draining %v, weight %d)",
			u, had, b, m.draining[b], m.weight[b])
	}
	cl := &churnLease{l: l, id: m.nextID, user: u, b: b}
	m.nextID++
	m.add(cl)
	m.live = append(m.live, cl)
	l.OnKill(func() {
		if cl.dead {
			m.fatalf("lease %d killed after it ended", cl.id)
		}
		m.kills++
		if m.kicking && !cl.kicked {
			cl.kicked = true // a kicked session stays live until released
			m.killed = append(m.killed, cl)
			return
		}
		m.drop(cl)
		if !cl.kicked {
			m.killed = append(m.killed, cl)
		}
	})
	m.peak = max(m.peak, len(m.live))
}

// lastOn is the backend the table binds u to, or -1.
func (m *churn) lastOn(u int) int {
	if name, _, ok := lookupPool(m.p, m.users[u]); ok {
		return m.p.Backend(name).index
	}
	return -1
}

// release ends a random live lease. The fewer there are the likelier it
// skips, so that some 400 sessions stay live.
func (m *churn) release() {
	if m.rng.IntN(400) >= len(m.live) {
		return
	}
	for len(m.live) > 0 {
		i := m.rng.IntN(len(m.live))
		cl := m.live[i]
		m.live[i] = m.live[len(m.live)-1]
		m.live = m.live[:len(m.live)-1]
		if cl.dead {
			continue
		}
		m.drop(cl)
		cl.l.Release()
		return
	}
}

// releaseDying lets a killed session get round to its Release, late.
func (m *churn) releaseDying() {
	for range 3 {
		m.releaseOneDying()
	}
}

func (m *churn) releaseOneDying() {
	if len(m.dying) == 0 {
		return
	}
	i := m.rng.IntN(len(m.dying))
	cl := m.dying[i]
	m.dying[i] = m.dying[len(m.dying)-1]
	m.dying = m.dying[:len(m.dying)-1]
	cl.l.Release()
	if !cl.dead {
		m.drop(cl) // kicked, live until now
	}
	if cl.user >= 0 {
		m.touched = append(m.touched, cl.user)
	}
}

func (m *churn) setDown(b int, proto Protocol, down bool) {
	if m.down[b][proto] == down {
		return
	}
	n := m.p.opts.Fall
	if !down {
		n = m.p.opts.Rise
	}
	for i := range n {
		if flipped := m.p.Observe(m.backends[b], proto, !down, "churn"); flipped != (i == n-1) {
			m.fatalf("backend %d %v: result %d of %d flipped=%v", b, proto, i+1, n, flipped)
		}
	}
	m.down[b][proto] = down
}

// noise is one check against the current state followed by one agreeing
// with it: it must change nothing.
func (m *churn) noise(b int, proto Protocol) {
	before, up := m.perB[b], !m.down[b][proto]
	if m.p.Observe(m.backends[b], proto, !up, "blip") || m.p.Observe(m.backends[b], proto, up, "ok") {
		m.fatalf("one odd check flipped backend %d", b)
	}
	if m.perB[b] != before {
		m.fatalf("one failed check killed sessions")
	}
}

func (m *churn) kick(b int) {
	want := 0
	for _, cl := range m.live {
		if !cl.dead && !cl.kicked && cl.b == b {
			want++
		}
	}
	m.kicking = true
	n := m.p.Kick(m.backends[b])
	m.kicking = false
	if n != want {
		m.fatalf("Kick(%d) = %d, want %d", b, n, want)
	}
	for _, cl := range m.live {
		if !cl.dead && cl.b == b && !cl.kicked {
			m.fatalf("after Kick(%d) lease %d was not told to end", b, cl.id)
		}
	}
}

// check runs after every step.
func (m *churn) check() {
	if m.split != 0 {
		m.fatalf("%d users live on two backends", m.split)
	}
	for i, b := range m.backends {
		if got := b.Sessions(); got != m.perB[i] {
			m.fatalf("backend %d: Sessions() = %d, %d live leases", i, got, m.perB[i])
		}
	}
	for _, u := range m.touched {
		total := int32(0)
		for _, n := range m.on[u] {
			total += n
		}
		name, live, _ := lookupPool(m.p, m.users[u])
		if int32(live) != total {
			m.fatalf("user %d: table has %d live on %q, model %d", u, live, name, total)
		}
		if b := m.liveOn(u); b >= 0 && name != m.backends[b].Name {
			m.fatalf("user %d: table says %q, live on %d", u, name, b)
		}
	}
	m.touched = m.touched[:0]
	// Killed sessions release later, in an order that does not depend on
	// the pool's map iteration, so a seed replays exactly.
	slices.SortFunc(m.killed, func(a, b *churnLease) int { return a.id - b.id })
	m.dying = append(m.dying, m.killed...)
	m.killed = m.killed[:0]
}

func TestChurn(t *testing.T) {
	seed := *churnSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -routing.seed=%d)", seed, seed)
	c := newClock()
	tab := NewMemTable(c.now)
	p, err := NewPool(Options{Policies: mailPolicies, Linger: churnLinger, Table: tab, Rise: 2, Fall: 2}, specs(churnBackends))
	if err != nil {
		t.Fatal(err)
	}
	m := &churn{
		t: t, seed: seed, p: p, clk: c, tab: tab,
		rng:      rand.New(rand.NewPCG(seed, 0x6d61696c70726f78)),
		backends: p.Backends(),
		on:       make([][churnBackends]int32, churnUsers),
		nOn:      make([]int8, churnUsers),
	}
	for i := range churnUsers {
		m.users = append(m.users, "user"+string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676))+"@example.org")
	}
	for i := range m.weight {
		m.weight[i] = 1
	}
	start := time.Now()
	for m.step = range churnSteps {
		b := m.rng.IntN(churnBackends)
		proto := Protocol(m.rng.IntN(int(numProtocols)))
		switch r := m.rng.IntN(1000); {
		case r < 300:
			m.op = "acquire imap"
			m.acquire(IMAP, m.rng.IntN(churnUsers))
		case r < 420:
			m.op = "acquire pop3"
			m.acquire(POP3, m.rng.IntN(churnUsers))
		case r < 450:
			m.op = "acquire smtp"
			m.acquire(SMTP, -1)
		case r < 830:
			m.op = "release"
			m.release()
		case r < 880:
			m.op = "release killed"
			m.releaseDying()
		case r < 890:
			m.op = "down"
			m.setDown(b, proto, true)
		case r < 920:
			m.op = "up"
			m.setDown(b, proto, false)
		case r < 930:
			m.op = "health noise"
			m.noise(b, proto)
		case r < 945:
			m.op = "drain"
			m.p.SetDraining(m.backends[b], true)
			m.draining[b] = true
		case r < 965:
			m.op = "undrain"
			m.p.SetDraining(m.backends[b], false)
			m.draining[b] = false
		case r < 975:
			m.op = "weight"
			m.weight[b] = m.rng.IntN(4)
			m.p.SetWeight(m.backends[b], m.weight[b])
		case r < 978:
			m.op = "kick"
			m.kick(b)
		case r < 980:
			m.op = "linger expires"
			c.advance(churnLinger + time.Second)
		case r < 998:
			m.op = "clock tick"
			c.advance(time.Duration(m.rng.IntN(10)) * time.Second)
		default:
			m.op = "sweep"
			tab.Sweep()
		}
		m.check()
	}
	live := 0
	for _, n := range m.perB {
		live += n
	}
	t.Logf("%d steps in %v; at the end %d live leases, %d killed awaiting release", churnSteps, time.Since(start), live, len(m.dying))
	t.Logf("peak %d leases; %d kills, %d users moved off down backends, %d stayed on draining ones, %d came back within linger, %d refused",
		m.peak, m.kills, m.moved, m.stayedDraining, m.lingerBack, m.refused)
}

// TestConcurrentChurn runs acquires, releases, health flips, drains and
// kicks from several goroutines at once, for the race detector and for the
// invariant as the pool itself sees it: UserSessions never shows a user on
// two backends.
func TestConcurrentChurn(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute, Rise: 1, Fall: 1}, specs(3))
	const workers, steps, users = 4, 3000, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var held []*Lease
			for range steps {
				b := p.Backends()[rng.IntN(3)]
				switch r := rng.IntN(100); {
				case r < 45:
					user := fmt.Sprint("u", rng.IntN(users))
					l, err := p.Acquire(context.Background(), Protocol(rng.IntN(2)), user)
					if err == nil {
						held = append(held, l)
					}
					if s := p.UserSessions(user); len(s) > 0 && s[0].Backend != s[len(s)-1].Backend {
						t.Errorf("%s split: %v", user, s)
						return
					}
				case r < 85 && len(held) > 0:
					i := rng.IntN(len(held))
					held[i].Release()
					held[i] = held[len(held)-1]
					held = held[:len(held)-1]
				case r < 92:
					p.Observe(b, Protocol(rng.IntN(2)), rng.IntN(2) == 0, "churn")
				case r < 98:
					p.SetDraining(b, rng.IntN(2) == 0)
				default:
					p.Kick(b)
				}
			}
			for _, l := range held {
				l.Release()
			}
		})
	}
	wg.Wait()
	for _, b := range p.Backends() {
		if n := b.Sessions(); n != 0 {
			t.Errorf("%s: %d sessions after every lease was released", b.Name, n)
		}
	}
	for i := range users {
		if name, live, _ := lookupPool(p, fmt.Sprint("u", i)); live != 0 {
			t.Errorf("u%d: table still has %d live on %s", i, live, name)
		}
	}
}
