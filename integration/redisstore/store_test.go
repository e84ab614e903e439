package redisstore

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/testkit"
)

// TestSharedNoSplit is issue 13 item 1: three instances on one Redis, 200
// users opening one or two concurrent sessions at a time, each through an
// instance chosen at random, while mail2 is drained (through instance a)
// and undrained (through b) and mail1 is stopped and started again. linger
// is 0, so users move whenever they have no live session anywhere. The
// backends' tracker must never see a user on two backends at once.
func TestSharedNoSplit(t *testing.T) {
	const nUsers = 200
	all := users(nUsers, "u")
	c := newCluster(t, 3, all, "3s", "0s")
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	var ok, failed atomic.Int64
	var through [3]atomic.Int64
	var errMu sync.Mutex
	var errs []string // the first few failures, for the log
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, u := range all {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			for cycle := 0; ; cycle++ {
				select {
				case <-stop:
					if cycle >= 2 {
						return
					}
				default:
				}
				var sw sync.WaitGroup
				for range 1 + rng.IntN(2) {
					k := rng.IntN(3)
					hold := rng.IntN(3)
					sw.Go(func() {
						s, err := login(c.inst[k].imap, u)
						if err != nil {
							failed.Add(1)
							errMu.Lock()
							if len(errs) < 10 {
								errs = append(errs, c.inst[k].name+": "+err.Error())
							}
							errMu.Unlock()
							return
						}
						through[k].Add(1)
						for range hold {
							if s.c.Noop().Wait() != nil {
								break
							}
						}
						s.close()
						ok.Add(1)
					})
				}
				sw.Wait()
			}
		})
	}
	waitOK := func(n int64) {
		t.Helper()
		target := ok.Load() + n
		if !testkit.Eventually(60*time.Second, 10*time.Millisecond, func() bool { return ok.Load() >= target }) {
			t.Fatalf("sessions stalled at %d ok, %d failed", ok.Load(), failed.Load())
		}
	}
	ctx := context.Background()
	waitOK(400)
	if _, err := c.inst[0].api.Drain(ctx, "p", "mail2"); err != nil {
		t.Fatal(err)
	}
	waitOK(400)
	if _, err := c.inst[1].api.Undrain(ctx, "p", "mail2"); err != nil {
		t.Fatal(err)
	}
	waitOK(400)
	c.backends[0].stop()
	waitOK(400)
	c.backends[0].start()
	waitOK(400)
	close(stop)
	wg.Wait()
	t.Logf("%d sessions ok, %d failed; through a/b/c: %d/%d/%d", ok.Load(), failed.Load(),
		through[0].Load(), through[1].Load(), through[2].Load())
	t.Logf("first failures: %q", errs)
	if s := c.tracker.Splits(); len(s) > 0 {
		t.Fatalf("users on two backends at once: %v", s)
	}
	for i := range through {
		if through[i].Load() == 0 {
			t.Errorf("no session went through instance %s", c.inst[i].name)
		}
	}
	if failed.Load() > ok.Load()/10 {
		t.Errorf("%d of %d sessions failed", failed.Load(), ok.Load()+failed.Load())
	}
}

// TestKillFreesUsers is issue 13 item 2: instance a is killed with
// SIGKILL while its users have live sessions; within lease_ttl the other
// instances see those users free, and their own sessions and new logins
// keep working.
func TestKillFreesUsers(t *testing.T) {
	const ttl = 2 * time.Second
	all := users(20, "k")
	c := newCluster(t, 3, all, ttl.String(), "1h")
	var onA, onB []*session
	for i, u := range all {
		s, err := login(c.inst[i%2].imap, u) // even users through a, odd through b
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			onA = append(onA, s)
		} else {
			onB = append(onB, s)
		}
	}
	defer func() {
		for _, s := range onB {
			s.close()
		}
	}()
	if _, live := c.inst[2].user(t, all[0]); live != 1 {
		t.Fatalf("before the kill, c sees %s with %d live sessions, want 1", all[0], live)
	}
	c.inst[0].kill()
	killed := time.Now()
	free := testkit.Eventually(ttl+2*time.Second, 20*time.Millisecond, func() bool {
		for i := 0; i < len(all); i += 2 {
			if _, live := c.inst[2].user(t, all[i]); live != 0 {
				return false
			}
		}
		return true
	})
	took := time.Since(killed)
	if !free {
		t.Fatalf("a's users still held %v after the kill (lease_ttl %v)", took, ttl)
	}
	t.Logf("a's users free %v after SIGKILL (lease_ttl %v)", took.Round(time.Millisecond), ttl)
	if took > ttl+500*time.Millisecond {
		t.Errorf("freeing took %v, more than lease_ttl %v", took, ttl)
	}
	for i, s := range onB {
		if err := s.c.Noop().Wait(); err != nil {
			t.Fatalf("b's session %d after a was killed: %v", i, err)
		}
		if _, live := c.inst[2].user(t, all[2*i+1]); live != 1 {
			t.Fatalf("%s: c sees %d live sessions, want 1 (b's)", all[2*i+1], live)
		}
	}
	// a's users log in again through c: they go back where they were
	// (their binding lingers), and b's users stay with b's sessions.
	for i, u := range all {
		s, err := login(c.inst[2].imap, u)
		if err != nil {
			t.Fatal(err)
		}
		want := onB[min(i/2, len(onB)-1)].backend
		if i%2 == 0 {
			want = onA[i/2].backend
		}
		if s.backend != want {
			t.Errorf("%s through c went to %s, want %s", u, s.backend, want)
		}
		s.close()
	}
	if s := c.tracker.Splits(); len(s) > 0 {
		t.Fatalf("users on two backends at once: %v", s)
	}
}

// TestStoreLoss is issue 13 item 3: Redis is stopped while users have
// live sessions. The sessions continue; new logins fall back to the
// cached binding or the hash (logged, and counted in
// mailproxy_store_fallback_total); Redis comes back empty (no
// persistence), and the instances write their live sessions back, so
// that every instance agrees again on where each user is.
func TestStoreLoss(t *testing.T) {
	all := users(30, "s")
	c := newCluster(t, 3, all, "8s", "1h")
	held := map[string]*session{}
	for i, u := range all[:20] {
		s, err := login(c.inst[i%3].imap, u)
		if err != nil {
			t.Fatal(err)
		}
		held[u] = s
	}
	defer func() {
		for _, s := range held {
			s.close()
		}
	}()
	c.redis.Stop()
	stopped := time.Now()
	for _, in := range c.inst {
		if !testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
			return strings.Contains(in.log.String(), "routing store unreachable") && in.metric("mailproxy_store_up") == 0
		}) {
			t.Fatalf("%s never noticed the store was gone:\n%s", in.name, in.log.String())
		}
	}
	for u, s := range held {
		if err := s.c.Noop().Wait(); err != nil {
			t.Fatalf("%s: live session broke when the store went: %v", u, err)
		}
	}
	// A second session of a held user through the same instance follows
	// the cached binding; a user never seen follows the hash.
	for i, u := range all[:6] {
		s, err := login(c.inst[i%3].imap, u)
		if err != nil {
			t.Fatalf("%s while the store is down: %v", u, err)
		}
		if s.backend != held[u].backend {
			t.Errorf("%s while the store is down went to %s, its live session is on %s", u, s.backend, held[u].backend)
		}
		s.close()
	}
	for _, u := range all[20:] {
		s, err := login(c.inst[0].imap, u)
		if err != nil {
			t.Fatalf("%s (new) while the store is down: %v", u, err)
		}
		s.close()
	}
	if n := c.inst[0].metric(`mailproxy_store_fallback_total{kind="cached"}`); n < 2 {
		t.Errorf("a counted %v cached fallback decisions, want >= 2", n)
	}
	if n := c.inst[0].metric(`mailproxy_store_fallback_total{kind="hash"}`); n < 10 {
		t.Errorf("a counted %v hash fallback decisions, want >= 10", n)
	}
	t.Logf("store down for %v", time.Since(stopped).Round(time.Millisecond))
	c.redis.Start()
	for _, in := range c.inst {
		if !testkit.Eventually(10*time.Second, 20*time.Millisecond, func() bool {
			return strings.Contains(in.log.String(), "routing store reachable") && in.metric("mailproxy_store_up") == 1
		}) {
			t.Fatalf("%s never noticed the store was back:\n%s", in.name, in.log.String())
		}
	}
	for u, s := range held {
		if err := s.c.Noop().Wait(); err != nil {
			t.Fatalf("%s: live session broke across the outage: %v", u, err)
		}
		for _, in := range c.inst {
			b, live := in.user(t, u)
			if b != s.backend || live != 1 {
				t.Errorf("after the store came back, %s sees %s on %s with %d live, want %s with 1", in.name, u, b, live, s.backend)
			}
		}
	}
	if strings.Contains(c.inst[0].log.String(), "fencing") {
		t.Errorf("a fenced itself during a short outage")
	}
	if s := c.tracker.Splits(); len(s) > 0 {
		t.Fatalf("users on two backends at once: %v", s)
	}
}

// TestAdminStateShared is issue 13 item 4: a drain, a pin and a weight
// made through instance a are in force on b and c, and still after all
// three restart; a move made through b ends the user's session held
// through a.
func TestAdminStateShared(t *testing.T) {
	all := users(40, "d")
	c := newCluster(t, 3, all, "3s", "0s")
	ctx := context.Background()
	a := c.inst[0]
	if _, err := a.api.Drain(ctx, "p", "mail1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.api.Pin(ctx, "d0", "p", "mail1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.api.Weight(ctx, "p", "mail3", 0); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		for _, in := range c.inst {
			if !testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
				st, err := in.api.Status(ctx)
				if err != nil {
					return false
				}
				b := st.Pools[0].Backends
				return b[0].Draining && b[2].Weight == 0
			}) {
				t.Fatalf("%s: %s does not show mail1 draining and mail3 at weight 0", when, in.name)
			}
			us, err := in.api.User(ctx, "d0")
			if err != nil || us.Pools[0].Pin != "mail1" {
				t.Fatalf("%s: %s shows pin %+v, %v; want mail1", when, in.name, us, err)
			}
			// mail1 drains and mail3 has weight 0: every new user goes to
			// mail2 (the pin names a draining backend, so it yields).
			for _, u := range all[1:11] {
				s, err := login(in.imap, u)
				if err != nil {
					t.Fatal(err)
				}
				if s.backend != "mail2" {
					t.Errorf("%s: %s through %s went to %s, want mail2", when, u, in.name, s.backend)
				}
				s.close()
			}
		}
	}
	check("after the changes")
	for _, in := range c.inst {
		in.stop()
	}
	for _, in := range c.inst {
		in.start()
	}
	check("after all three restarted")

	// Undrain: the pin is in force everywhere.
	if _, err := c.inst[2].api.Undrain(ctx, "p", "mail1"); err != nil {
		t.Fatal(err)
	}
	if !testkit.Eventually(5*time.Second, 10*time.Millisecond, func() bool {
		st, err := a.api.Status(ctx)
		return err == nil && !st.Pools[0].Backends[0].Draining
	}) {
		t.Fatal("the undrain made through c never reached a")
	}
	held, err := login(a.imap, "d0")
	if err != nil {
		t.Fatal(err)
	}
	if held.backend != "mail1" {
		t.Fatalf("pinned d0 went to %s, want mail1", held.backend)
	}
	// Move through b: a's session of d0 ends, the next login goes to mail2.
	if _, err := c.inst[1].api.Move(ctx, "d0", "p", "mail2"); err != nil {
		t.Fatal(err)
	}
	if !testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool { return held.c.Noop().Wait() != nil }) {
		t.Fatal("d0's session through a survived the move made through b")
	}
	held.c.Close()
	if !testkit.Eventually(5*time.Second, 20*time.Millisecond, func() bool { return len(c.tracker.Sessions("d0")) == 0 }) {
		t.Fatal("d0's old session never ended on the backend")
	}
	s, err := login(c.inst[2].imap, "d0")
	if err != nil {
		t.Fatal(err)
	}
	if s.backend != "mail2" {
		t.Errorf("after the move, d0 went to %s, want mail2", s.backend)
	}
	s.close()
}
