package routing

import (
	"context"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock for MemTable; safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// to returns a decide callback that records what it was shown and answers
// backend.
func to(backend string, seen *string) func(string, int, bool) string {
	return func(cur string, live int, ok bool) string {
		if seen != nil {
			*seen = bindingString(cur, live, ok)
		}
		return backend
	}
}

func bindingString(backend string, live int, ok bool) string {
	if !ok {
		return "none"
	}
	return backend + "/" + string(rune('0'+live))
}

func lookupString(t Table, user string) string {
	b, live, ok, err := t.Lookup(context.Background(), user)
	if err != nil {
		return "error: " + err.Error()
	}
	return bindingString(b, live, ok)
}

// tokens drives a Table as sessions would: it keeps the token of the last
// acquire per user and backend, and releases with it.
type tokens struct {
	tab  Table
	last map[string]Token
}

func newTokens(tab Table) *tokens { return &tokens{tab: tab, last: map[string]Token{}} }

func (k *tokens) acquire(user string, decide func(string, int, bool) string) {
	tok, err := k.tab.Acquire(context.Background(), user, decide)
	if err != nil {
		panic(err)
	}
	if tok.Backend != "" {
		k.last[user+"/"+tok.Backend] = tok
	}
}

// release gives back the last token acquired for user on backend; a
// backend never acquired gets a token no binding has.
func (k *tokens) release(user, backend string, linger time.Duration) {
	tok, ok := k.last[user+"/"+backend]
	if !ok {
		tok = Token{Backend: backend, Gen: 1 << 60}
	}
	if err := k.tab.Release(context.Background(), user, tok, linger); err != nil {
		panic(err)
	}
}

func TestMemTable(t *testing.T) {
	const linger = time.Minute
	c := newClock()
	tab := NewMemTable(c.now)
	k := newTokens(tab)
	var seen string
	steps := []struct {
		name string
		do   func()
		user string
		want string // binding after the step
		seen string // what decide was shown ("" when not called)
	}{
		{"first acquire", func() { k.acquire("u", to("b1", &seen)) }, "u", "b1/1", "none"},
		{"second acquire same backend", func() { k.acquire("u", to("b1", &seen)) }, "u", "b1/2", "b1/1"},
		{"release for another backend ignored", func() { k.release("u", "b2", linger) }, "u", "b1/2", ""},
		{"release one", func() { k.release("u", "b1", linger) }, "u", "b1/1", ""},
		{"release last lingers", func() { k.release("u", "b1", linger) }, "u", "b1/0", ""},
		{"extra release ignored", func() { k.release("u", "b1", linger) }, "u", "b1/0", ""},
		{"still lingering just before deadline", func() { c.advance(linger - time.Nanosecond) }, "u", "b1/0", ""},
		{"expired at deadline", func() { c.advance(time.Nanosecond) }, "u", "none", ""},
		{"empty answer adds nothing", func() { k.acquire("u", to("", &seen)) }, "u", "none", "none"},
		{"acquire again", func() { k.acquire("u", to("b1", &seen)) }, "u", "b1/1", "none"},
		{"move restarts count", func() { k.acquire("u", to("b2", &seen)) }, "u", "b2/1", "b1/1"},
		{"release for moved-from backend ignored", func() { k.release("u", "b1", linger) }, "u", "b2/1", ""},
		{"empty answer keeps binding", func() { k.acquire("u", to("", &seen)) }, "u", "b2/1", "b2/1"},
		{"release on new backend", func() { k.release("u", "b2", linger) }, "u", "b2/0", ""},
		{"lingering binding shown to decide", func() { k.acquire("u", to("b2", &seen)) }, "u", "b2/1", "b2/0"},
	}
	for _, s := range steps {
		seen = ""
		s.do()
		if got := lookupString(tab, s.user); got != s.want {
			t.Fatalf("%s: binding %s, want %s", s.name, got, s.want)
		}
		if seen != s.seen {
			t.Fatalf("%s: decide saw %q, want %q", s.name, seen, s.seen)
		}
	}
}

// TestMemTableLateRelease: a session of an old binding that releases after
// the user moved away and back must not end the newer binding's session.
func TestMemTableLateRelease(t *testing.T) {
	ctx := context.Background()
	tab := NewMemTable(newClock().now)
	old, _ := tab.Acquire(ctx, "u", to("b1", nil))
	tab.Release(ctx, "u", old, time.Minute)
	moved, _ := tab.Acquire(ctx, "u", to("b2", nil))
	tab.Release(ctx, "u", moved, time.Minute)
	back, _ := tab.Acquire(ctx, "u", to("b1", nil))
	if back.Gen == old.Gen {
		t.Fatalf("binding made again has the old generation %d", old.Gen)
	}
	tab.Release(ctx, "u", old, time.Minute) // late, twice over
	if got := lookupString(tab, "u"); got != "b1/1" {
		t.Fatalf("after a late release of the old binding: %s, want b1/1", got)
	}
	if err := tab.Move(ctx, "u", "b2", time.Minute); err != nil {
		t.Fatal(err)
	}
	tab.Release(ctx, "u", back, time.Minute)
	if got := lookupString(tab, "u"); got != "b2/0" {
		t.Fatalf("after move and a release of the moved-away session: %s, want b2/0", got)
	}
}

func TestMemTableLingerZero(t *testing.T) {
	c := newClock()
	tab := NewMemTable(c.now)
	k := newTokens(tab)
	k.acquire("u", to("b1", nil))
	k.release("u", "b1", 0)
	if got := lookupString(tab, "u"); got != "none" {
		t.Fatalf("linger 0: binding %s, want none", got)
	}
}

func TestMemTableSweep(t *testing.T) {
	c := newClock()
	tab := NewMemTable(c.now)
	k := newTokens(tab)
	k.acquire("live", to("b1", nil))
	k.acquire("short", to("b1", nil))
	k.release("short", "b1", time.Second)
	k.acquire("long", to("b2", nil))
	k.release("long", "b2", time.Hour)
	if n := tab.Sweep(); n != 3 {
		t.Fatalf("Sweep before expiry = %d, want 3", n)
	}
	c.advance(time.Minute)
	if n := tab.Sweep(); n != 2 {
		t.Fatalf("Sweep = %d, want 2", n)
	}
	if n := len(tab.users); n != 2 {
		t.Fatalf("%d bindings kept, want 2", n)
	}
	for user, want := range map[string]string{"live": "b1/1", "short": "none", "long": "b2/0"} {
		if got := lookupString(tab, user); got != want {
			t.Errorf("%s: binding %s, want %s", user, got, want)
		}
	}
	c.advance(time.Hour)
	if n := tab.Sweep(); n != 1 {
		t.Fatalf("Sweep after an hour = %d, want 1 (the live one)", n)
	}
}

func TestMemTableDefaultClock(t *testing.T) {
	tab := NewMemTable(nil)
	k := newTokens(tab)
	k.acquire("u", to("b1", nil))
	k.release("u", "b1", time.Hour)
	if got := lookupString(tab, "u"); got != "b1/0" {
		t.Fatalf("binding %s, want b1/0", got)
	}
}

func TestHealthObserve(t *testing.T) {
	const F, T = false, true
	tests := []struct {
		name       string
		rise, fall int
		results    []bool
		down       []bool // state after each result
	}{
		{"starts up, stays up", 2, 2, []bool{T, T}, []bool{F, F}},
		{"fall failures take it down", 2, 3, []bool{F, F, F, F}, []bool{F, F, T, T}},
		{"fall 1 is immediate", 2, 1, []bool{F}, []bool{T}},
		{"rise successes bring it up", 3, 2, []bool{F, F, T, T, T, T}, []bool{F, T, T, T, F, F}},
		{"a success resets the fall streak", 2, 2, []bool{F, T, F, T, F, F}, []bool{F, F, F, F, F, T}},
		{"a failure resets the rise streak", 2, 2, []bool{F, F, T, F, T, T}, []bool{F, T, T, T, T, F}},
		{"alternating never flips", 2, 2,
			[]bool{F, T, F, T, F, T, F, T, F, T},
			[]bool{F, F, F, F, F, F, F, F, F, F}},
		{"alternating never flips while down", 2, 2,
			[]bool{F, F, T, F, T, F, T, F},
			[]bool{F, T, T, T, T, T, T, T}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h health
			if h.down {
				t.Fatal("zero health is down, want up")
			}
			for i, ok := range tt.results {
				was := h.down
				flipped := h.observe(ok, tt.rise, tt.fall, "r")
				if h.down != tt.down[i] {
					t.Fatalf("after result %d (%v): down=%v, want %v", i, ok, h.down, tt.down[i])
				}
				if flipped != (was != h.down) {
					t.Fatalf("after result %d: flipped=%v, but state went %v -> %v", i, flipped, was, h.down)
				}
			}
		})
	}
}

func TestHealthReason(t *testing.T) {
	var h health
	h.observe(false, 2, 2, "refused")
	h.observe(false, 2, 2, "timeout")
	if !h.down || h.reason != "timeout" {
		t.Fatalf("down=%v reason=%q, want down with the flipping reason", h.down, h.reason)
	}
	h.observe(false, 2, 2, "reset")
	if h.reason != "reset" {
		t.Fatalf("reason %q, want the latest failure while down", h.reason)
	}
}

func TestKey(t *testing.T) {
	tests := []struct {
		login    string
		keepCase bool
		domain   string
		want     string
	}{
		{"Alice", false, "example.org", "alice@example.org"},
		{"alice", false, "example.org", "alice@example.org"},
		{"alice@example.org", false, "example.org", "alice@example.org"},
		{"ALICE@Example.ORG", false, "example.org", "alice@example.org"},
		{"Alice", false, "Example.ORG", "alice@example.org"},
		{"alice@other.net", false, "example.org", "alice@other.net"},
		{"Alice", false, "", "alice"},
		{"Alice", true, "", "Alice"},
		{"Alice", true, "example.org", "Alice@example.org"},
		{"Alice@Example.ORG", true, "example.org", "Alice@Example.ORG"},
		{"", false, "", ""},
	}
	for _, tt := range tests {
		if got := Key(tt.login, tt.keepCase, tt.domain); got != tt.want {
			t.Errorf("Key(%q, %v, %q) = %q, want %q", tt.login, tt.keepCase, tt.domain, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	for p := range numProtocols {
		got, err := ParseProtocol(p.String())
		if err != nil || got != p {
			t.Errorf("ParseProtocol(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParseProtocol("nntp"); err == nil {
		t.Error("ParseProtocol(nntp): no error")
	}
	for s, want := range map[string]Policy{"sticky": Sticky, "round-robin": RoundRobin, "least-conn": LeastConn} {
		if got, err := ParsePolicy(s); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy(random): no error")
	}
}
