package auth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"mailproxy/protocols"
)

func TestPenaltyDelay(t *testing.T) {
	p := NewPenalty(PenaltyOptions{BaseDelay: 2 * time.Second, MaxDelay: 15 * time.Second})
	want := []time.Duration{2, 2, 4, 8, 15, 15, 15}
	for n, w := range want {
		if got := p.Delay(n); got != w*time.Second {
			t.Errorf("Delay(%d) = %v, want %v", n, got, w*time.Second)
		}
	}
}

// The timings run on synctest's clock: the 15 s waits take no real time,
// and the time each failed login waited is what the user would see.
func TestPenaltyGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log bytes.Buffer
		var refusals []string
		p := NewPenalty(PenaltyOptions{
			Window: 15 * time.Minute, BaseDelay: 2 * time.Second, MaxDelay: 15 * time.Second,
			IPUserLimit: 10, IPLimit: 50, UserLimit: 30,
			Normalize: strings.ToLower,
			Log:       slog.New(slog.NewTextHandler(&log, nil)),
			OnRefusal: func(s string) { refusals = append(refusals, s) },
		})
		ctx := context.Background()
		g := p.Guard("192.0.2.7")
		timed := func(f func()) time.Duration {
			start := time.Now()
			f()
			return time.Since(start)
		}
		var waits []time.Duration
		for range 10 {
			if err := g.Allow(ctx, "Alice"); err != nil {
				t.Fatalf("refused after %d failures", len(waits))
			}
			waits = append(waits, timed(func() { g.Failed(ctx, "alice") }))
		}
		want := []time.Duration{2, 4, 8, 15, 15, 15, 15, 15, 15, 15}
		for i := range want {
			if waits[i] != want[i]*time.Second {
				t.Fatalf("waits = %v, want %v seconds", waits, want)
			}
		}
		var err error
		if d := timed(func() { err = g.Allow(ctx, "alice") }); !errors.Is(err, protocols.ErrLoginRefused) || d != 15*time.Second {
			t.Fatalf("11th attempt: %v after %v, want a refusal after 15s", err, d)
		}
		// Another user of the same address: at once.
		if d := timed(func() { err = g.Allow(ctx, "bob") }); err != nil || d != 0 {
			t.Fatalf("bob: %v after %v", err, d)
		}
		// Alice from another address: at once too.
		if err := p.Guard("198.51.100.1").Allow(ctx, "alice"); err != nil {
			t.Fatalf("alice elsewhere: %v", err)
		}
		if len(refusals) != 1 || refusals[0] != ScopeIPUser {
			t.Errorf("refusals = %v", refusals)
		}
		if !strings.Contains(log.String(), `msg="`+RefusalMessage+`" client_ip=192.0.2.7 user=alice scope=ip-user failures=10`) {
			t.Errorf("log line: %s", log.String())
		}
		// The window slides: 15 minutes later alice may try again.
		time.Sleep(15*time.Minute + time.Minute)
		if err := g.Allow(ctx, "alice"); err != nil {
			t.Fatalf("after the window: %v", err)
		}
	})
}

func TestPenaltySuccessResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPenalty(PenaltyOptions{Window: time.Hour, BaseDelay: time.Second, MaxDelay: 15 * time.Second, IPUserLimit: 3})
		ctx := context.Background()
		g := p.Guard("192.0.2.7")
		g.Failed(ctx, "alice")
		g.Failed(ctx, "alice")
		g.Succeeded("alice")
		g.Failed(ctx, "alice")
		g.Failed(ctx, "alice")
		if err := g.Allow(ctx, "alice"); err != nil {
			t.Fatalf("refused with 2 failures since the success: %v", err)
		}
		start := time.Now()
		g.Failed(ctx, "alice")
		if d := time.Since(start); d != 4*time.Second {
			t.Errorf("3rd failure since the success waited %v, want 4s", d)
		}
		if err := g.Allow(ctx, "alice"); !errors.Is(err, protocols.ErrLoginRefused) {
			t.Fatalf("3 failures: %v", err)
		}
	})
}

// The address's own limit, for the many users of one NAT address: high,
// and reached only by failures of all of them together.
func TestPenaltyIPLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPenalty(PenaltyOptions{Window: time.Hour, IPUserLimit: 10, IPLimit: 20})
		ctx := context.Background()
		g := p.Guard("192.0.2.7")
		for i := range 20 {
			g.Failed(ctx, string(rune('a'+i)))
		}
		if err := g.Allow(ctx, "zed"); !errors.Is(err, protocols.ErrLoginRefused) {
			t.Fatalf("address over its limit: %v", err)
		}
		if err := p.Guard("192.0.2.8").Allow(ctx, "zed"); err != nil {
			t.Fatalf("another address: %v", err)
		}
	})
}

func TestMemCounterBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemCounter(100)
		ctx := context.Background()
		for i := range 1000 {
			m.Add(ctx, string(rune(i)), time.Now(), time.Minute)
		}
		if m.Len() != 100 {
			t.Fatalf("%d keys, want the bound 100", m.Len())
		}
		time.Sleep(2 * time.Minute)
		m.Add(ctx, "new", time.Now(), time.Minute)
		if m.Len() != 1 {
			t.Fatalf("%d keys after the window, want 1", m.Len())
		}
		for range 6 {
			time.Sleep(15 * time.Second)
			m.Add(ctx, "new", time.Now(), time.Minute)
		}
		// Events at 0, 15, ..., 90 s; the last minute holds 45 to 90.
		if n, _ := m.Count(ctx, "new", time.Now(), time.Minute); n != 4 {
			t.Errorf("count = %d, want 4 events of the last minute", n)
		}
	})
}

// An IPv6 client counts as its /64: moving to another address of it does
// not start a fresh count.
func TestPenaltyIPv6Prefix(t *testing.T) {
	p := NewPenalty(PenaltyOptions{Window: time.Hour, IPUserLimit: 2, Wait: func(context.Context, time.Duration) {}})
	ctx := context.Background()
	p.Guard("2001:db8:1:2::7").Failed(ctx, "alice")
	p.Guard("2001:db8:1:2:ffff::1").Failed(ctx, "alice")
	if err := p.Guard("2001:db8:1:2::99").Allow(ctx, "alice"); !errors.Is(err, protocols.ErrLoginRefused) {
		t.Errorf("another address of the /64: %v, want a refusal", err)
	}
	if err := p.Guard("2001:db8:1:3::7").Allow(ctx, "alice"); err != nil {
		t.Errorf("another /64: %v", err)
	}
	if err := p.Guard("192.0.2.8").Allow(ctx, "alice"); err != nil {
		t.Errorf("IPv4: %v", err)
	}
	if counted("::ffff:192.0.2.7") != "::ffff:192.0.2.7" || counted("192.0.2.7") != "192.0.2.7" {
		t.Errorf("IPv4 addresses are counted each on its own")
	}
}
