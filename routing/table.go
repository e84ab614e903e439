package routing

import (
	"sync"
	"time"
)

// Table holds, per user, the backend the user is bound to and how many live
// sessions the user has there. It is the seam for sharing routing state
// between several active instances: the in-memory MemTable is enough for one
// instance or an active/standby pair; a shared store (Redis/Valkey, etcd)
// implements the same three calls with an atomic get-or-set and expiring keys.
//
// A Table never decides where a user goes: Pool does, and hands the table the
// decision through the decide callback, so the table stays a plain store.
type Table interface {
	// Acquire adds one live session for user. decide is called with the
	// user's current binding (ok=false when there is none, live=0 when the
	// user only lingers) and returns the backend the session goes to; when
	// that differs from the current binding, the binding moves and the live
	// count restarts at one. Acquire returns decide's answer; an empty
	// answer adds nothing. decide may run more than once (a store retrying
	// its compare-and-set) and only its last answer counts; it must not
	// call back into the table.
	Acquire(user string, decide func(backend string, live int, ok bool) string) string
	// Release ends one live session of user on backend. A release for a
	// backend the user has since moved away from is ignored. When the last
	// session ends, the binding lingers until now+linger.
	Release(user, backend string, linger time.Duration)
	// Lookup returns the user's binding: backend, live sessions, and whether
	// there is one (a lingering binding has live=0).
	Lookup(user string) (backend string, live int, ok bool)
}

// MemTable is the in-memory Table. The zero value is not usable; use
// NewMemTable. Expired bindings are dropped lazily and by Sweep.
type MemTable struct {
	mu    sync.Mutex
	users map[string]binding // by value: a million users are one allocation-free map
	now   func() time.Time
	epoch time.Time // deadlines count from here, on the monotonic clock
}

type binding struct {
	backend string
	live    int
	until   time.Duration // linger deadline since epoch, when live == 0
}

var _ Table = (*MemTable)(nil)

// NewMemTable returns an empty table. now is the clock (nil: time.Now).
func NewMemTable(now func() time.Time) *MemTable {
	if now == nil {
		now = time.Now
	}
	return &MemTable{users: make(map[string]binding), now: now, epoch: now()}
}

func (t *MemTable) since() time.Duration { return t.now().Sub(t.epoch) }

// lookup returns the user's binding, dropping it when its linger ran out.
// The caller holds t.mu.
func (t *MemTable) lookup(user string) (binding, bool) {
	b, ok := t.users[user]
	if ok && b.live == 0 && t.since() >= b.until {
		delete(t.users, user)
		return binding{}, false
	}
	return b, ok
}

// Acquire implements Table.
func (t *MemTable) Acquire(user string, decide func(string, int, bool) string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.lookup(user)
	to := decide(b.backend, b.live, ok)
	if to == "" {
		return ""
	}
	if ok && b.backend == to {
		b.live++
	} else {
		b = binding{backend: to, live: 1}
	}
	t.users[user] = b
	return to
}

// Release implements Table.
func (t *MemTable) Release(user, backend string, linger time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.users[user]
	if !ok || b.backend != backend || b.live == 0 {
		return
	}
	b.live--
	if b.live == 0 {
		b.until = t.since() + linger
	}
	t.users[user] = b
}

// Lookup implements Table.
func (t *MemTable) Lookup(user string) (string, int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.lookup(user)
	return b.backend, b.live, ok
}

// Sweep drops every binding whose linger has run out and returns how many
// bindings remain. Run it now and then so users who never return do not
// keep memory.
func (t *MemTable) Sweep() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.since()
	for u, b := range t.users {
		if b.live == 0 && now >= b.until {
			delete(t.users, u)
		}
	}
	return len(t.users)
}
