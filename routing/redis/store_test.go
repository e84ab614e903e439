package redis

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"mailproxy/internal/testkit"
)

// testRedis is a Redis for a test that can be stopped and started again
// (empty) on its address.
type testRedis struct {
	addr        string
	stop, start func()
	// advance moves miniredis's clock for its expiring keys; a real
	// server's runs by itself.
	advance func(time.Duration)
}

// newRedis is a real redis-server when installed, else miniredis (in
// process). It says which in the test log.
func newRedis(t testing.TB) testRedis {
	if testkit.RedisServerPath() != "" {
		r := testkit.StartRedis(t)
		t.Logf("real redis-server on %s", r.Addr)
		return testRedis{r.Addr, r.Stop, r.Start, func(time.Duration) {}}
	}
	m := miniredis.RunT(t)
	t.Logf("miniredis on %s (redis-server not installed)", m.Addr())
	return testRedis{m.Addr(), m.Close, func() {
		m.FlushAll()
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}, m.FastForward}
}

func redisAddr(t testing.TB) string { return newRedis(t).addr }

// newStore runs a store named instance against addr until the test ends,
// and waits until it is registered.
func newStore(t testing.TB, addr, instance string, ttl time.Duration, mod func(*Options)) *Store {
	t.Helper()
	opts := Options{Addrs: []string{addr}, Instance: instance, LeaseTTL: ttl, Prefix: "t:",
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	if mod != nil {
		mod(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return !s.Down() }) {
		t.Fatalf("store %s never registered", instance)
	}
	return s
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// counter is an Observer that counts fallbacks by kind.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) Call(string, time.Duration, error) {}
func (c *counter) Up(bool)                           {}
func (c *counter) Fallback(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[kind]++
}

func (c *counter) get(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[kind]
}

func stick(to string) func(string, int, bool) string {
	return func(cur string, live int, ok bool) string {
		if ok {
			return cur
		}
		return to
	}
}

// TestStoreDownFallbackFenceRecover: with the store gone, decisions follow
// the cached binding or the hash (counted); after 3/4 of lease_ttl the
// instance fences itself, once; when the store returns empty, the instance
// registers anew and writes its live sessions back.
func TestStoreDownFallbackFenceRecover(t *testing.T) {
	const ttl = time.Second
	r := newRedis(t)
	var obs counter
	var fenced atomic.Int32
	s := newStore(t, r.addr, "a", ttl, func(o *Options) {
		o.Observer = &obs
		o.OnFence = func() { fenced.Add(1) }
	})
	tab := s.Table("p", time.Minute)
	ctx := context.Background()
	if tok, err := tab.Acquire(ctx, "u1", stick("b1")); err != nil || tok.Backend != "b1" {
		t.Fatalf("acquire: %v %v", tok, err)
	}
	r.stop()
	stopped := time.Now()
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, s.Down) {
		t.Fatal("the store never noticed Redis was gone")
	}
	if tok, _ := tab.Acquire(ctx, "u1", stick("b9")); tok.Backend != "b1" {
		t.Errorf("cached user went to %q while the store was down, want b1", tok.Backend)
	}
	if tok, _ := tab.Acquire(ctx, "u2", stick("b2")); tok.Backend != "b2" {
		t.Errorf("new user went to %q while the store was down, want b2 (the hash)", tok.Backend)
	}
	if obs.get("cached") != 1 || obs.get("hash") != 1 {
		t.Errorf("fallbacks counted: %v, want cached 1, hash 1", obs.n)
	}
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return fenced.Load() > 0 }) {
		t.Fatal("never fenced")
	}
	if since := time.Since(stopped); since < ttl/2 {
		t.Errorf("fenced %v after the store went, before most of lease_ttl %v", since, ttl)
	}
	r.start()
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return !s.Down() }) {
		t.Fatal("never recovered")
	}
	if fenced.Load() != 1 {
		t.Errorf("fenced %d times in one outage", fenced.Load())
	}
	other := newStore(t, r.addr, "b", ttl, nil)
	ot := other.Table("p", time.Minute)
	for user, want := range map[string]struct {
		backend string
		live    int
	}{"u1": {"b1", 2}, "u2": {"b2", 1}} {
		b, live, ok, err := ot.Lookup(ctx, user)
		if err != nil || !ok || b != want.backend || live != want.live {
			t.Errorf("after recovery, b sees %s on %s with %d live (%v, %v), want %s with %d", user, b, live, ok, err, want.backend, want.live)
		}
	}
}

// TestRecoverConflict: a user placed by the hash while this instance could
// not reach the store, and placed elsewhere meanwhile by another instance
// that could, has its sessions here ended when the store answers again.
func TestRecoverConflict(t *testing.T) {
	addr := redisAddr(t)
	var conflicts atomic.Int32
	a := newStore(t, addr, "a", 10*time.Second, func(o *Options) {
		o.OnConflict = func(pool, user string) {
			if pool == "p" && user == "u" {
				conflicts.Add(1)
			}
		}
	})
	b := newStore(t, addr, "b", 10*time.Second, nil)
	ctx := context.Background()
	a.setDown(errors.New("test: partition"))
	if tok, _ := a.Table("p", time.Minute).Acquire(ctx, "u", stick("b1")); tok.Backend != "b1" {
		t.Fatalf("fallback placed u on %q", tok.Backend)
	}
	if tok, _ := b.Table("p", time.Minute).Acquire(ctx, "u", stick("b2")); tok.Backend != "b2" {
		t.Fatalf("b placed u on %q", tok.Backend)
	}
	a.recover(ctx, false)
	if conflicts.Load() == 0 {
		t.Fatal("no conflict reported")
	}
	if bk, live, _, _ := b.Table("p", time.Minute).Lookup(ctx, "u"); bk != "b2" || live != 1 {
		t.Errorf("u is on %s with %d live, want b's b2 with 1", bk, live)
	}
}

// TestRegistrationExpires: an instance that stops refreshing (killed) frees
// its users' bindings after lease_ttl.
func TestRegistrationExpires(t *testing.T) {
	const ttl = time.Second
	r := newRedis(t)
	addr := r.addr
	ctx := context.Background()
	s, err := New(Options{Addrs: []string{addr}, Instance: "dead", LeaseTTL: ttl, Prefix: "t:"})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(rctx) }()
	testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return !s.Down() })
	s.Table("p", time.Minute).Acquire(ctx, "u", stick("b1"))
	cancel() // stops refreshing, and does not say goodbye: as a kill
	<-done
	killed := time.Now()
	other := newStore(t, addr, "alive", ttl, nil)
	if _, live, _, _ := other.Table("p", time.Minute).Lookup(ctx, "u"); live != 1 {
		t.Fatalf("right after the kill, u has %d live, want 1", live)
	}
	if !testkit.Eventually(3*ttl, 10*time.Millisecond, func() bool {
		r.advance(10 * time.Millisecond)
		_, live, _, _ := other.Table("p", time.Minute).Lookup(ctx, "u")
		return live == 0
	}) {
		t.Fatal("u still held after 3 x lease_ttl")
	}
	if took := time.Since(killed); took > ttl+300*time.Millisecond {
		t.Errorf("freed after %v, lease_ttl is %v", took, ttl)
	}
	s.c.Close()
}

// TestInstanceNameTaken: a second instance under a live instance's name
// does not register over it; it stays down (decides without the store).
func TestInstanceNameTaken(t *testing.T) {
	addr := redisAddr(t)
	newStore(t, addr, "same", 10*time.Second, nil)
	var logs testkit.SyncBuffer
	s, err := New(Options{Addrs: []string{addr}, Instance: "same", LeaseTTL: 10 * time.Second, Prefix: "t:",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done; s.c.Close() }()
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool {
		return strings.Contains(logs.String(), "registered by another live instance")
	}) {
		t.Fatalf("no complaint about the name:\n%s", logs.String())
	}
	if !s.Down() {
		t.Error("the second instance is up under a taken name")
	}
}
