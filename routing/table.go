package routing

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrStoreDown is wrapped by a Table's errors when its shared store cannot
// be reached and its policy refuses to decide without it.
var ErrStoreDown = errors.New("routing store unavailable")

// Token names the binding one session was acquired under. Release takes it
// back, so a release that arrives after the user was moved away (and maybe
// back) can never end a newer binding's session: the generation differs.
type Token struct {
	Backend string // "" when the decision was to place nothing
	Gen     uint64 // the binding's generation; a new one every time the binding is made or moves
}

// Table holds, per user, the backend the user is bound to and how many live
// sessions the user has there. It is the seam for sharing routing state
// between several active instances: the in-memory MemTable is enough for one
// instance or an active/standby pair; routing/redis implements the same calls
// with an atomic get-or-set script and expiring keys.
//
// A Table never decides where a user goes: Pool does, and hands the table the
// decision through the decide callback, so the table stays a plain store.
// Every call may make a network round trip: the pool holds no lock of its
// own while one runs.
type Table interface {
	// Acquire adds one live session for user. decide is called with the
	// user's current binding (ok=false when there is none, live=0 when the
	// user only lingers) and returns the backend the session goes to; when
	// that differs from the current binding, the binding moves (a new
	// generation) and the live count restarts at one. An empty answer adds
	// nothing and returns a zero Token. decide may run more than once (a
	// store retrying its compare-and-set) and only its last answer counts;
	// it must not call back into the table.
	Acquire(ctx context.Context, user string, decide func(backend string, live int, ok bool) string) (Token, error)
	// Release ends one live session acquired under tok. A token whose
	// generation is no longer the user's binding is ignored. When the
	// last session ends, the binding lingers until now+linger.
	Release(ctx context.Context, user string, tok Token, linger time.Duration) error
	// Lookup returns the user's binding: backend, live sessions, and whether
	// there is one (a lingering binding has live=0).
	Lookup(ctx context.Context, user string) (backend string, live int, ok bool, err error)
	// Move re-points user to backend: a new generation with no live
	// session, lingering for linger. Sessions of the old binding no
	// longer count; the caller ends them.
	Move(ctx context.Context, user, backend string, linger time.Duration) error
}

// MemTable is the in-memory Table. The zero value is not usable; use
// NewMemTable. Expired bindings are dropped lazily and by Sweep. Its calls
// never fail.
type MemTable struct {
	mu    sync.Mutex
	users map[string]binding // by value: a million users are one allocation-free map
	gen   uint64
	now   func() time.Time
	epoch time.Time // deadlines count from here, on the monotonic clock
}

type binding struct {
	backend string
	gen     uint64
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
func (t *MemTable) Acquire(_ context.Context, user string, decide func(string, int, bool) string) (Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.lookup(user)
	to := decide(b.backend, b.live, ok)
	if to == "" {
		return Token{}, nil
	}
	if ok && b.backend == to {
		b.live++
	} else {
		t.gen++
		b = binding{backend: to, gen: t.gen, live: 1}
	}
	t.users[user] = b
	return Token{Backend: to, Gen: b.gen}, nil
}

// Release implements Table.
func (t *MemTable) Release(_ context.Context, user string, tok Token, linger time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.users[user]
	if !ok || b.gen != tok.Gen || b.live == 0 {
		return nil
	}
	b.live--
	if b.live == 0 {
		b.until = t.since() + linger
	}
	t.users[user] = b
	return nil
}

// Lookup implements Table.
func (t *MemTable) Lookup(_ context.Context, user string) (string, int, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.lookup(user)
	return b.backend, b.live, ok, nil
}

// Move implements Table.
func (t *MemTable) Move(_ context.Context, user, backend string, linger time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.users[user] = binding{backend: backend, gen: t.gen, until: t.since() + linger}
	return nil
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
