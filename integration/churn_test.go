package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/demo"
)

// churnPhase is what the test has done to the backends so far.
type churnPhase int32

const (
	phaseWarmup     churnPhase = iota
	phaseMail1Down             // mail1 stopped and marked down
	phaseMail1Back             // mail1 restarted and marked up
	phaseMail2Drain            // mail2 draining
	phaseMail2Empty            // mail2 draining with no session left
	numPhases
)

func (p churnPhase) String() string {
	return [...]string{"warmup", "mail1 down", "mail1 back", "mail2 draining", "mail2 drained empty"}[p]
}

// churnStats counts the sessions of TestChurnNoSplit.
type churnStats struct {
	phase  atomic.Int32
	ok     atomic.Int64
	failed atomic.Int64
	// where[phase][backend]: sessions that logged in and selected within
	// one phase, by backend (1..3: the message count tells them apart).
	where [numPhases][4]atomic.Int64
}

// TestChurnNoSplit is issue 6 item 2: 200 users open and close IMAP
// sessions (one to three at once each) through the proxy while mail1 is
// stopped, restarted on the same address, and mail2 is drained through
// the admin API. The fake backends share one Tracker, which records any
// user logged in on two of them at once: there must be none. linger is 0,
// so users move whenever they have no live session, the hardest case.
func TestChurnNoSplit(t *testing.T) {
	const nUsers = 200
	tr := demo.NewTracker()
	all := users(nUsers, "u")
	var backs []*opsBackend
	var cfg []string
	for i, name := range []string{"mail1", "mail2", "mail3"} {
		b := newOpsBackend(t, name, all, tr, i+1)
		backs = append(backs, b)
		cfg = append(cfg, name, b.addr)
	}
	// A timeout far above the interval. Under the race detector, beside
	// other test binaries, connecting to a live fake can stall for
	// seconds; a check or login timing out would take a live backend down,
	// and a down backend's users move at once by design (down means dead).
	// The stop is seen at once anyway: a stopped fake refuses connections.
	e := startProxy(t, opsConfig(`linger = "0s"
  [pool.health]
  interval = "50ms"
  timeout = "10s"
  rise = 2
  fall = 2
`, cfg...))
	ac := startAdmin(t, e, "")
	pool := e.Srv.Pool("p")
	mail1, mail2 := pool.Backend("mail1"), pool.Backend("mail2")
	var st churnStats
	seed := rand.Uint64()
	t.Logf("seed %d", seed)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for u := range nUsers {
		wg.Go(func() {
			churnUser(e.Addr["imap"], fmt.Sprintf("u%d", u), rand.New(rand.NewPCG(seed, uint64(u))), &st, stop)
		})
	}
	start := time.Now()
	defer func() {
		close(stop)
		wg.Wait()
		t.Logf("%d sessions ok, %d failed in %v", st.ok.Load(), st.failed.Load(), time.Since(start).Round(time.Millisecond))
		for p := range numPhases {
			w := &st.where[p]
			t.Logf("%-20s mail1 %4d  mail2 %4d  mail3 %4d", p, w[1].Load(), w[2].Load(), w[3].Load())
		}
	}()
	// next waits for 300 more good sessions, then enters phase p.
	next := func(p churnPhase) {
		t.Helper()
		target := st.ok.Load() + 300
		waitFor(t, 15*time.Second, fmt.Sprintf("300 sessions before %v", p), func() bool { return st.ok.Load() >= target })
		st.phase.Store(int32(p))
	}
	state := func(b string) string { return backendStatus(t, ac, b).State }

	target := st.ok.Load() + 300
	waitFor(t, 15*time.Second, "300 sessions of warm-up", func() bool { return st.ok.Load() >= target })
	backs[0].stop()
	waitFor(t, 5*time.Second, "mail1 down", func() bool { return state("mail1") == "down" })
	st.phase.Store(int32(phaseMail1Down))

	next(phaseMail1Down) // 300 more with mail1 down
	backs[0].start()
	waitFor(t, 5*time.Second, "mail1 up", func() bool { return state("mail1") == "up" })
	st.phase.Store(int32(phaseMail1Back))
	waitFor(t, 15*time.Second, "users back on mail1", func() bool { return st.where[phaseMail1Back][1].Load() >= 20 })

	next(phaseMail1Back)
	if _, err := ac.Drain(context.Background(), "p", "mail2"); err != nil {
		t.Fatal(err)
	}
	st.phase.Store(int32(phaseMail2Drain))
	waitFor(t, 15*time.Second, "mail2 without sessions", func() bool { return mail2.Sessions() == 0 })
	st.phase.Store(int32(phaseMail2Empty))
	next(phaseMail2Empty)

	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close
	waitFor(t, 10*time.Second, "every session to end", func() bool {
		return mail1.Sessions()+mail2.Sessions()+pool.Backend("mail3").Sessions() == 0
	})

	if s := tr.Splits(); len(s) > 0 {
		t.Errorf("%d times a user was on two backends at once, first: %v", len(s), s[:min(len(s), 5)])
	}
	if n := st.where[phaseMail1Down][1].Load(); n > 0 {
		t.Errorf("%d sessions reached mail1 while it was down", n)
	}
	if n := st.where[phaseMail2Empty][2].Load(); n > 0 {
		t.Errorf("%d sessions reached drained mail2 after its last session ended", n)
	}
	waitFor(t, 5*time.Second, "the backends to see every session end", func() bool {
		for u := range all {
			if len(tr.Sessions(u)) > 0 {
				return false
			}
		}
		return true
	})
}

// churnUser is one user: cycles of one to three concurrent sessions until
// stop, at least three cycles.
func churnUser(addr, user string, rng *rand.Rand, st *churnStats, stop <-chan struct{}) {
	for cycle := 0; ; cycle++ {
		select {
		case <-stop:
			if cycle >= 3 {
				return
			}
		default:
		}
		var wg sync.WaitGroup
		for range 1 + rng.IntN(3) {
			noops := rng.IntN(3)
			wg.Go(func() { churnSession(addr, user, noops, st) })
		}
		wg.Wait()
	}
}

// churnSession logs in, selects INBOX (which tells the backend), sends a
// few NOOPs and logs out. Failures are expected while backends stop.
func churnSession(addr, user string, noops int, st *churnStats) {
	before := churnPhase(st.phase.Load())
	c, err := loginIMAP(addr, user)
	if err != nil {
		st.failed.Add(1)
		return
	}
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		st.failed.Add(1)
		return
	}
	if after := churnPhase(st.phase.Load()); after == before && sel.NumMessages >= 1 && sel.NumMessages <= 3 {
		st.where[before][sel.NumMessages].Add(1)
	}
	for range noops {
		if err := c.Noop().Wait(); err != nil {
			st.failed.Add(1)
			return
		}
	}
	if err := c.Logout().Wait(); err != nil {
		st.failed.Add(1)
		return
	}
	st.ok.Add(1)
}
