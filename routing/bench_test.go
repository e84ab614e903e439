package routing

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

const (
	benchBackends = 100
	benchUsers    = 1_000_000
)

type benchFixture struct {
	pool  *Pool
	users []string
}

// benchKnown is a pool of 100 backends whose table knows a million users,
// each lingering after one session. Built once: it takes a few seconds.
var benchKnown = sync.OnceValue(func() benchFixture {
	p, err := NewPool(Options{Policies: mailPolicies, Linger: 24 * time.Hour}, specs(benchBackends))
	if err != nil {
		panic(err)
	}
	users := benchUserNames("known", benchUsers)
	for _, u := range users {
		l, err := p.Acquire(context.Background(), IMAP, u)
		if err != nil {
			panic(err)
		}
		l.Release()
	}
	return benchFixture{p, users}
})

func benchUserNames(prefix string, n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("%s%07d@example.org", prefix, i)
	}
	return users
}

// BenchmarkPick is one session of a known user: Acquire and Release.
func BenchmarkPick(b *testing.B) {
	f := benchKnown()
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l, err := f.pool.Acquire(context.Background(), IMAP, f.users[rng.IntN(len(f.users))])
		if err != nil {
			b.Fatal(err)
		}
		l.Release()
	}
}

// BenchmarkPickParallel is BenchmarkPick from every CPU at once: the
// pool's lock is the limit.
func BenchmarkPickParallel(b *testing.B) {
	f := benchKnown()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for pb.Next() {
			l, err := f.pool.Acquire(context.Background(), IMAP, f.users[rng.IntN(len(f.users))])
			if err != nil {
				b.Error(err)
				return
			}
			l.Release()
		}
	})
}

// BenchmarkRendezvous is the hashing choice for a new user over 100
// backends, with equal and with unequal weights.
func BenchmarkRendezvous(b *testing.B) {
	users := benchUserNames("new", 1<<16)
	for _, weighted := range []bool{false, true} {
		b.Run(fmt.Sprintf("weighted=%v", weighted), func(b *testing.B) {
			p, err := NewPool(Options{Policies: mailPolicies}, specs(benchBackends))
			if err != nil {
				b.Fatal(err)
			}
			if weighted {
				p.SetWeight(p.Backends()[0], 2)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.mu.Lock()
				if p.rendezvous(IMAP, users[i&(len(users)-1)], nil) == nil {
					b.Fatal("no backend")
				}
				p.mu.Unlock()
				i++
			}
		})
	}
}

// BenchmarkAcquireNewUser is a first session of a user the table has not
// seen: rendezvous plus a new binding.
func BenchmarkAcquireNewUser(b *testing.B) {
	p, err := NewPool(Options{Policies: mailPolicies}, specs(benchBackends))
	if err != nil {
		b.Fatal(err)
	}
	users := benchUserNames("new", 1<<16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l, err := p.Acquire(context.Background(), IMAP, users[i&(len(users)-1)])
		if err != nil {
			b.Fatal(err)
		}
		l.Release() // linger 0: the binding goes at the next lookup
		i++
	}
}
