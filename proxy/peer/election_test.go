package peer

import (
	"strings"
	"testing"
)

func TestOutranks(t *testing.T) {
	for _, c := range []struct {
		a, b member
		want bool
	}{
		{member{"lb1", 100}, member{"lb2", 50}, true},
		{member{"lb2", 50}, member{"lb1", 100}, false},
		{member{"lb1", 100}, member{"lb2", 100}, true}, // tie: the lower name
		{member{"lb2", 100}, member{"lb1", 100}, false},
		{member{"b", -1}, member{"a", -2}, true},
	} {
		if got := c.a.outranks(c.b); got != c.want {
			t.Errorf("%v outranks %v = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestDecide(t *testing.T) {
	hi, lo := member{"lb1", 100}, member{"lb2", 50}
	alive := func(m member, r Role) view { return view{member: m, alive: true, role: r} }
	for _, c := range []struct {
		name    string
		self    member
		preempt bool
		current Role
		peer    view
		want    Role
		why     string
	}{
		{"alone at start", lo, false, Standby, view{}, Active, "no live peer"},
		{"peer lost", lo, false, Standby, view{member: hi, role: Active}, Active, "no live peer"},
		{"active stays when peer lost", hi, false, Active, view{member: lo}, Active, "no live peer"},

		{"both start, higher wins", hi, false, Standby, alive(lo, Standby), Active, "we outrank lb2"},
		{"both start, lower waits", lo, false, Standby, alive(hi, Standby), Standby, "lb1 outranks us"},
		{"tie on priority: lower name wins", member{"a", 1}, false, Standby, alive(member{"b", 1}, Standby), Active, "outrank b"},
		{"tie on priority: higher name waits", member{"b", 1}, false, Standby, alive(member{"a", 1}, Standby), Standby, "a outranks"},

		{"standby under active peer", lo, false, Standby, alive(hi, Active), Standby, "lb1 is active"},
		{"returning higher, no preempt, stays standby", hi, false, Standby, alive(lo, Active), Standby, "lb2 is active"},
		{"returning higher, preempt, takes over", hi, true, Standby, alive(lo, Active), Active, "preempt"},
		{"lower with preempt never takes over", lo, true, Standby, alive(hi, Active), Standby, "lb1 is active"},

		{"active keeps role over returning higher", lo, false, Active, alive(hi, Standby), Active, "lb1 is standby"},
		{"active keeps role, own preempt irrelevant", lo, true, Active, alive(hi, Standby), Active, "lb1 is standby"},
		{"active higher keeps role", hi, false, Active, alive(lo, Standby), Active, "lb2 is standby"},

		{"split brain heals: higher stays", hi, false, Active, alive(lo, Active), Active, "both active, we outrank"},
		{"split brain heals: lower steps down", lo, false, Active, alive(hi, Active), Standby, "both active, lb1 outranks"},
		{"split brain heals whatever preempt says", lo, true, Active, alive(hi, Active), Standby, "outranks us"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, why := decide(c.self, c.preempt, c.current, c.peer)
			if got != c.want || !strings.Contains(why, c.why) {
				t.Errorf("decide = %v (%q), want %v (%q)", got, why, c.want, c.why)
			}
		})
	}
}

// TestDecideConverges plays both nodes against each other from every
// starting pair of roles: after at most two exchanges of heartbeats exactly
// one is active, and it stays so.
func TestDecideConverges(t *testing.T) {
	for _, pa := range []bool{false, true} {
		for _, pb := range []bool{false, true} {
			for _, ra := range []Role{Standby, Active} {
				for _, rb := range []Role{Standby, Active} {
					a, b := member{"lb1", 100}, member{"lb2", 50}
					for range 3 {
						na, _ := decide(a, pa, ra, view{member: b, alive: true, role: rb})
						nb, _ := decide(b, pb, rb, view{member: a, alive: true, role: na})
						ra, rb = na, nb
					}
					if ra == rb {
						t.Errorf("preempt %v/%v: ended %v/%v", pa, pb, ra, rb)
					}
					if ra2, _ := decide(a, pa, ra, view{member: b, alive: true, role: rb}); ra2 != ra {
						t.Errorf("preempt %v/%v: lb1 flaps from %v", pa, pb, ra)
					}
				}
			}
		}
	}
}
