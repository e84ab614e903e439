package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"mailproxy/routing"
)

// TestPropertyAgainstMemTable runs the same random steps on the Redis
// table and on routing.MemTable: acquires with a decision that sticks to
// a live binding and otherwise picks a random backend, releases of held
// sessions, moves, late releases of the sessions a move ended, and lookups.
// After every step both tables must show the same binding, and the live
// count must be the number of sessions held under the binding's
// generation (the invariant that keeps a user on one backend).
func TestPropertyAgainstMemTable(t *testing.T) {
	addr := redisAddr(t)
	for _, linger := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprint("linger=", linger), func(t *testing.T) {
			s := newStore(t, addr, "prop-"+linger.String(), 30*time.Second, nil)
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			propertyRun(t, s.Table("p"+linger.String(), linger), routing.NewMemTable(nil), linger, rand.New(rand.NewPCG(seed, 1)))
		})
	}
}

type held struct{ mem, red routing.Token }

func propertyRun(t *testing.T, red, mem routing.Table, linger time.Duration, rng *rand.Rand) {
	ctx := context.Background()
	backends := []string{"b1", "b2", "b3"}
	users := []string{"u0", "u1", "u2", "u3", "u4"}
	live := map[string][]held{}  // sessions held, by user
	stale := map[string][]held{} // sessions of a binding moved away, not yet released
	for step := range 2000 {
		u := users[rng.IntN(len(users))]
		target := backends[rng.IntN(len(backends))]
		if rng.IntN(10) == 0 {
			target = "" // nothing fits
		}
		stick := rng.IntN(4) != 0 // a lingering user goes back (rule 3), or not
		decide := func(cur string, n int, ok bool) string {
			if ok && (n > 0 || stick) {
				return cur
			}
			return target
		}
		var what string
		switch r := rng.IntN(10); {
		case r < 4:
			what = "acquire"
			mt, err1 := mem.Acquire(ctx, u, decide)
			rt, err2 := red.Acquire(ctx, u, decide)
			if err1 != nil || err2 != nil {
				t.Fatalf("step %d acquire: %v %v", step, err1, err2)
			}
			if mt.Backend != rt.Backend {
				t.Fatalf("step %d acquire %s: memory placed on %q, redis on %q", step, u, mt.Backend, rt.Backend)
			}
			if mt.Backend != "" {
				live[u] = append(live[u], held{mt, rt})
			}
		case r < 8 && len(live[u]) > 0:
			what = "release"
			i := rng.IntN(len(live[u]))
			h := live[u][i]
			live[u] = append(live[u][:i], live[u][i+1:]...)
			mem.Release(ctx, u, h.mem, linger)
			if err := red.Release(ctx, u, h.red, linger); err != nil {
				t.Fatalf("step %d release: %v", step, err)
			}
		case r == 8 && len(stale[u]) > 0:
			what = "late release"
			h := stale[u][0]
			stale[u] = stale[u][1:]
			mem.Release(ctx, u, h.mem, linger)
			red.Release(ctx, u, h.red, linger)
		case r == 9 && linger > 0:
			what = "move"
			// As Pool.Move does: the sessions are ended, their releases
			// come late and must not count.
			stale[u] = append(stale[u], live[u]...)
			live[u] = nil
			mem.Move(ctx, u, target+"x", linger)
			if err := red.Move(ctx, u, target+"x", linger); err != nil {
				t.Fatal(err)
			}
		default:
			what = "lookup"
		}
		for _, v := range users {
			mb, ml, mok, _ := mem.Lookup(ctx, v)
			rb, rl, rok, err := red.Lookup(ctx, v)
			if err != nil {
				t.Fatal(err)
			}
			if mb != rb || ml != rl || mok != rok {
				t.Fatalf("step %d (%s %s): %s is %s/%d/%v in memory, %s/%d/%v in redis", step, what, u, v, mb, ml, mok, rb, rl, rok)
			}
			if ml != len(live[v]) {
				t.Fatalf("step %d (%s %s): %s has %d live sessions, table says %d", step, what, u, v, len(live[v]), ml)
			}
			for _, h := range live[v] {
				if h.red.Backend != rb {
					t.Fatalf("step %d: %s holds a session on %s while bound to %s", step, v, h.red.Backend, rb)
				}
			}
		}
	}
}
