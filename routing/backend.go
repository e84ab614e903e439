// Package routing decides which backend a session goes to: pools of
// backends, their health and drain state, the balancing policies (sticky
// rendezvous hashing, round-robin, least-connections) and the live lease
// registry that keeps all of one user's sessions on one backend. It knows
// nothing of sockets or protocols beyond their names.
package routing

import (
	"fmt"
	"iter"
	"sync/atomic"
)

// Protocol names the mail protocol of a session.
type Protocol int

// The protocols a pool serves. LMTP and ManageSieve touch a user's mail
// store as IMAP does (deliveries, Sieve scripts); the proxy gives them
// IMAP's policy.
const (
	IMAP Protocol = iota
	POP3
	SMTP
	LMTP
	ManageSieve
	numProtocols
)

// NumProtocols is how many protocols there are: the length of
// BackendSpec.Serves and Options.Policies.
const NumProtocols = int(numProtocols)

func (p Protocol) String() string {
	switch p {
	case IMAP:
		return "imap"
	case POP3:
		return "pop3"
	case SMTP:
		return "smtp"
	case LMTP:
		return "lmtp"
	case ManageSieve:
		return "managesieve"
	}
	return fmt.Sprintf("protocol(%d)", int(p))
}

// ParseProtocol maps "imap", "pop3", "smtp", "lmtp" and "managesieve" to
// a Protocol.
func ParseProtocol(s string) (Protocol, error) {
	for p := range numProtocols {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

// Policy is how a pool balances sessions of users with no live session.
type Policy int

// The balancing policies.
const (
	Sticky Policy = iota // rendezvous hashing on the user, with linger
	RoundRobin
	LeastConn
)

// ParsePolicy maps the config words to a Policy.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "sticky":
		return Sticky, nil
	case "round-robin":
		return RoundRobin, nil
	case "least-conn":
		return LeastConn, nil
	}
	return 0, fmt.Errorf("unknown policy %q", s)
}

// State is what a backend can do for one protocol.
type State int

// Backend states, as /status shows them.
const (
	Up       State = iota
	Down           // failed its health checks
	Draining       // no new users; live users keep coming
	Disabled       // disabled in config, or no address for the protocol
)

func (s State) String() string {
	return [...]string{"up", "down", "draining", "disabled"}[s]
}

// BackendSpec describes a backend when a pool is built.
type BackendSpec struct {
	Name     string
	Weight   int                // 0 means never chosen for new users
	Serves   [numProtocols]bool // which protocols have an address
	Disabled bool               // in config: never chosen
	Data     any                // the caller's own per-backend data (addresses, TLS)
}

// Backend is one mail server of a pool. Its name is fixed; everything else
// changes through the Pool (Pool.Reconfigure, drains, health).
type Backend struct {
	Name string

	index int
	seed  uint64
	data  atomic.Pointer[any] // BackendSpec.Data; replaced by Reconfigure

	// Guarded by Pool.mu.
	serves     [numProtocols]bool
	disabled   bool
	retired    bool // removed from the config; kept while sessions hold it
	baseWeight int  // from the config; runtime changes go on top
	weight     int
	draining   bool
	health     [numProtocols]health
	curRR      [numProtocols]int // smooth weighted round-robin state
	leases     leaseList

	sessions atomic.Int64
}

// Data returns the caller's own data of the backend (BackendSpec.Data), as
// of the last NewPool or Reconfigure.
func (b *Backend) Data() any {
	if d := b.data.Load(); d != nil {
		return *d
	}
	return nil
}

// Sessions is the number of live leases on the backend, all protocols.
func (b *Backend) Sessions() int { return int(b.sessions.Load()) }

// leaseList is a backend's live leases, linked through the leases
// themselves: adding and removing one costs no hashing and no allocation.
// Guarded by Pool.mu.
type leaseList struct {
	head *Lease
	n    int
}

func (ll *leaseList) add(l *Lease) {
	l.prev, l.next = nil, ll.head
	if ll.head != nil {
		ll.head.prev = l
	}
	ll.head = l
	ll.n++
}

func (ll *leaseList) remove(l *Lease) {
	if l.prev != nil {
		l.prev.next = l.next
	} else {
		ll.head = l.next
	}
	if l.next != nil {
		l.next.prev = l.prev
	}
	l.prev, l.next = nil, nil
	ll.n--
}

// all yields every lease; the one yielded may be removed meanwhile.
func (ll *leaseList) all() iter.Seq[*Lease] {
	return func(yield func(*Lease) bool) {
		for l := ll.head; l != nil; {
			next := l.next
			if !yield(l) {
				return
			}
			l = next
		}
	}
}

// health is the rise/fall state machine of one backend and protocol.
// A backend starts up (as in HAProxy), so a restarted proxy serves at once.
type health struct {
	down   bool
	streak int // consecutive results against the current state
	reason string
}

// observe records one check result and reports whether the state flipped.
func (h *health) observe(ok bool, rise, fall int, reason string) bool {
	if ok != h.down { // result agrees with the current state
		h.streak = 0
		if !ok {
			h.reason = reason
		}
		return false
	}
	h.streak++
	need := fall
	if h.down {
		need = rise
	}
	if h.streak < need {
		return false
	}
	h.down, h.streak = !h.down, 0
	h.reason = reason
	return true
}
