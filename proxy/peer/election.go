package peer

import "fmt"

// Role is what one instance of the pair does: an active instance serves
// clients, a standby one holds no client listener open.
type Role uint8

// The roles. Standby is the zero value: every node starts as standby.
const (
	Standby Role = iota
	Active
)

// String is "active" or "standby", as logs and /status write it.
func (r Role) String() string {
	switch r {
	case Standby:
		return "standby"
	case Active:
		return "active"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// member is one node as the election sees it.
type member struct {
	node     string
	priority int32
}

// outranks reports whether a wins over b when both are alive: the higher
// priority, on a tie the lower node name. Both nodes compute the same
// answer from the same two heartbeats, so they never both claim the rank.
func (a member) outranks(b member) bool {
	if a.priority != b.priority {
		return a.priority > b.priority
	}
	return a.node < b.node
}

// view is what a node knows of its peer.
type view struct {
	member
	alive bool // heard within dead_after, and not leaving
	role  Role // as its last heartbeat said
}

// decide is the whole election: the role self should have now, given its
// current role and what it knows of the peer, and why. It is pure, so both
// nodes running it on each other's heartbeats converge:
//
//   - a peer not heard for dead_after, or that said it is leaving, does
//     not count: be active;
//   - both active (a healed split): the higher rank stays, the other steps
//     down;
//   - the peer active and we standby: stay standby, unless preempt is on
//     and we outrank it (it steps down when it hears our claim);
//   - we active and the peer standby: stay active, whatever the ranks: a
//     returning peer with preempt off does not disturb us;
//   - both standby (both just started): the higher rank becomes active.
func decide(self member, preempt bool, current Role, peer view) (Role, string) {
	p := peer.node
	switch {
	case !peer.alive:
		return Active, "no live peer"
	case peer.role == Active && current == Active:
		if self.outranks(peer.member) {
			return Active, fmt.Sprintf("both active, we outrank %s", p)
		}
		return Standby, fmt.Sprintf("both active, %s outranks us", p)
	case peer.role == Active:
		if preempt && self.outranks(peer.member) {
			return Active, fmt.Sprintf("preempt: we outrank active %s", p)
		}
		return Standby, fmt.Sprintf("%s is active", p)
	case current == Active:
		return Active, fmt.Sprintf("%s is standby", p)
	case self.outranks(peer.member):
		return Active, fmt.Sprintf("both standby, we outrank %s", p)
	}
	return Standby, fmt.Sprintf("both standby, %s outranks us", p)
}
