package routing

import (
	"fmt"
	"testing"
)

// A reload reconfigures a pool in place: leases, bindings and drains carry
// over, a removed backend keeps its live users until they leave, and a
// changed policy or weight never splits a user.
func TestReconfigure(t *testing.T) {
	p, clk := newPool(t, Options{Policies: mailPolicies, Linger: 60e9}, specs(3))
	b0, b1, b2 := p.Backend("b0"), p.Backend("b1"), p.Backend("b2")
	// Users with a live IMAP session on each of b0..b2.
	var onB2 string
	leases := map[string]*Lease{}
	for i := 0; onB2 == "" || len(leases) < 30; i++ {
		u := fmt.Sprintf("u%d", i)
		l := acquire(t, p, IMAP, u)
		leases[u] = l
		if l.Backend == b2 && onB2 == "" {
			onB2 = u
		}
	}
	p.SetDraining(b1, true) // at runtime: must survive
	p.SetWeight(b0, 5)      // at runtime, and the new config keeps b0's weight of 1

	// New config: b2 removed, b3 added, b1 re-weighted, a pin to b3,
	// round-robin IMAP.
	next := []BackendSpec{spec("b0", 1), spec("b1", 3), spec("b3", 1)}
	pol := mailPolicies
	pol[IMAP] = RoundRobin
	if err := p.Reconfigure(Options{Policies: pol, Linger: 60e9, Pins: map[string]string{"pinned": "b3"}}, next); err != nil {
		t.Fatal(err)
	}
	if p.Backend("b0") != b0 || p.Backend("b1") != b1 {
		t.Fatal("kept backends were replaced, losing their state")
	}
	st := map[string]BackendStatus{}
	for _, s := range p.Status() {
		st[s.Name] = s
	}
	switch {
	case !st["b1"].Draining:
		t.Error("the runtime drain of b1 did not survive")
	case st["b1"].Weight != 3:
		t.Errorf("b1 weight %d, want the new config's 3", st["b1"].Weight)
	case st["b0"].Weight != 5:
		t.Errorf("b0 weight %d, want the runtime 5 (its config weight did not change)", st["b0"].Weight)
	case !st["b2"].Removed || st["b2"].Sessions == 0:
		t.Errorf("removed b2 with live sessions: %+v", st["b2"])
	case st["b3"].Sessions != 0 || st["b3"].State != "up":
		t.Errorf("new b3: %+v", st["b3"])
	}
	// Every user with a live session still goes to its backend, b2 included.
	for u, l := range leases {
		if got := acquire(t, p, IMAP, u); got.Backend != l.Backend {
			t.Fatalf("user %s live on %s was sent to %s after the reload", u, l.Backend.Name, got.Backend.Name)
		} else {
			got.Release()
		}
	}
	if got := acquire(t, p, IMAP, "pinned"); got.Backend.Name != "b3" {
		t.Errorf("the new pin sent the user to %s", got.Backend.Name)
	}
	// No new user reaches the removed backend; once its sessions end it is gone.
	for i := range 50 {
		if l := acquire(t, p, IMAP, fmt.Sprintf("new%d", i)); l.Backend == b2 {
			t.Fatal("a new user went to a removed backend")
		}
	}
	for _, l := range leases {
		l.Release()
	}
	clk.advance(61e9)
	if l := acquire(t, p, IMAP, onB2); l.Backend == b2 {
		t.Error("a user lingering on a removed backend went back to it")
	}
	if err := p.Reconfigure(Options{Policies: pol}, next); err != nil {
		t.Fatal(err)
	}
	if p.Backend("b2") != nil {
		t.Error("a removed backend with no session is still found after the next reload")
	}
	// Refused: nothing changes.
	if err := p.Reconfigure(Options{Policies: pol, Pins: map[string]string{"x": "nope"}}, next); err == nil {
		t.Error("a pin to an unknown backend was accepted")
	}
	if err := p.Reconfigure(Options{Policies: pol}, append(next, spec("b0", 1))); err == nil {
		t.Error("duplicate backend names were accepted")
	}
	if len(p.Backends()) != 3 {
		t.Errorf("a refused reconfigure changed the backends: %d", len(p.Backends()))
	}
}
