package redis

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"mailproxy/routing"
)

// localGen marks the generation of a binding made while the store was
// down: store generations never have it.
const localGen = 1 << 63

// maxAlias bounds the earlier generations an entry remembers: one per
// outage its sessions lived through.
const maxAlias = 8

// maxCache bounds the bindings a Table remembers for the store's outages;
// past it, bindings with no local session are dropped.
const maxCache = 1 << 20

// Table is one pool's routing.Table in Redis. It keeps, per user it has
// seen, the binding the store last returned and this instance's own live
// sessions: that is what it decides from while the store is down, and
// what it writes back when the store returns.
type Table struct {
	s      *Store
	pool   string
	keyPfx string
	linger time.Duration
	head   [2]any // the scripts' first two arguments, boxed once: regPfx, linger in ms

	mu    sync.Mutex
	cache map[string]*entry
	dirty map[string]struct{} // users whose entry is dirty
}

type entry struct {
	backend string
	gen     uint64
	live    bool     // the store's last word: someone has live sessions
	local   int      // this instance's live sessions under gen
	alias   []uint64 // earlier generations whose sessions local counts (made while down, then synced)
	dirty   bool     // local is not what the store has
}

func (e *entry) owns(gen uint64) bool {
	if e.gen == gen {
		return true
	}
	for _, a := range e.alias {
		if a == gen {
			return true
		}
	}
	return false
}

var _ routing.Table = (*Table)(nil)

func (t *Table) key(user string) string { return t.keyPfx + user }

func (t *Table) args(extra ...any) []any {
	a := make([]any, 0, len(t.head)+len(extra))
	return append(append(a, t.head[:]...), extra...)
}

// Acquire implements routing.Table: a compare-and-set over the user's
// binding, with the decision made before the store is asked: on the
// cached binding, or for a user this instance has not seen on there being
// none (the policy's choice). One round trip when that guess is right,
// two when the store holds something else. The latency of the whole
// decision, round trips and the wait for a batch included, is reported
// as the "acquire" call.
func (t *Table) Acquire(ctx context.Context, user string, decide func(string, int, bool) string) (routing.Token, error) {
	if t.s.Down() {
		return t.fallback(user, decide)
	}
	start := time.Now()
	tok, err := t.acquire(user, decide)
	t.s.obs.Call("acquire", time.Since(start), err)
	if err != nil && t.s.Down() {
		return t.fallback(user, decide)
	}
	return tok, err
}

func (t *Table) acquire(user string, decide func(string, int, bool) string) (routing.Token, error) {
	field := t.s.fieldArg()
	expGen, expLive, choice := "-", "0", ""
	t.mu.Lock()
	switch e := t.cache[user]; {
	case e == nil:
		t.mu.Unlock()
		expGen, choice = "0", decide("", 0, false)
	case e.gen&localGen == 0:
		live := 0
		if e.live {
			live, expLive = 1, "1"
		}
		expGen = strconv.FormatUint(e.gen, 10)
		t.mu.Unlock()
		choice = decide(e.backend, live, true)
	default:
		t.mu.Unlock() // placed while the store was down: read first
	}
	key := t.key(user)
	for range 8 {
		res, err := t.s.runAcquire([]string{key, t.s.genKey}, t.args(expGen, expLive, choice, field))
		if err != nil {
			return routing.Token{}, fmt.Errorf("acquire %s: %w", user, err)
		}
		applied, b, gen, n := parseState(res)
		if applied {
			if b == "" {
				return routing.Token{}, nil
			}
			t.acquired(user, b, gen)
			return routing.Token{Backend: b, Gen: gen}, nil
		}
		expGen, expLive = strconv.FormatUint(gen, 10), "0"
		if n > 0 {
			expLive = "1"
		}
		choice = decide(b, int(n), b != "")
	}
	return routing.Token{}, fmt.Errorf("acquire %s: binding kept changing", user)
}

// parseState reads a script's {applied, backend, gen, live}.
func parseState(res []any) (applied bool, backend string, gen uint64, live int64) {
	if len(res) < 4 {
		return
	}
	a, _ := res[0].(int64)
	backend, _ = res[1].(string)
	gs, _ := res[2].(string)
	gen, _ = strconv.ParseUint(gs, 10, 64)
	live, _ = res[3].(int64)
	return a == 1, backend, gen, live
}

// acquired records a session the store counted.
func (t *Table) acquired(user, backend string, gen uint64) {
	t.mu.Lock()
	e := t.cache[user]
	conflict := false
	if e == nil || !e.owns(gen) {
		// A new binding: sessions of an older one no longer count, except
		// those placed while the store was down and not yet written back.
		ne := &entry{backend: backend, gen: gen}
		if e != nil && e.local > 0 && e.gen&localGen != 0 {
			if e.backend == backend {
				ne.local, ne.alias = e.local, append(e.alias[:0:0], e.gen)
				t.setDirty(user, ne)
			} else {
				conflict = true
			}
		}
		e = ne
		t.put(user, e)
	}
	e.live = true
	e.local++
	t.mu.Unlock()
	if conflict && t.s.opts.OnConflict != nil {
		t.s.log.Warn("routing store: user placed here while the store was down is bound elsewhere; ending those sessions",
			"pool", t.pool, "user", user, "store", backend)
		t.s.opts.OnConflict(t.pool, user)
	}
}

// setDirty marks e, the entry of user, as not what the store has. The
// caller holds t.mu.
func (t *Table) setDirty(user string, e *entry) {
	e.dirty = true
	t.dirty[user] = struct{}{}
}

// put adds e, making room first. The caller holds t.mu.
func (t *Table) put(user string, e *entry) {
	if len(t.cache) >= maxCache {
		for u, old := range t.cache {
			if old.local == 0 && !old.dirty {
				delete(t.cache, u)
				break
			}
		}
	}
	t.cache[user] = e
}

// fallback decides without the store: the cached binding if there is one,
// else whatever decide says (the hash); or nothing with Refuse.
func (t *Table) fallback(user string, decide func(string, int, bool) string) (routing.Token, error) {
	if t.s.opts.Refuse {
		t.s.obs.Fallback("refused")
		return routing.Token{}, fmt.Errorf("acquire %s: %w", user, routing.ErrStoreDown)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.cache[user]
	var to string
	if e != nil {
		live := 0
		if e.live || e.local > 0 {
			live = 1
		}
		to = decide(e.backend, live, true)
		t.s.obs.Fallback("cached")
	} else {
		to = decide("", 0, false)
		t.s.obs.Fallback("hash")
	}
	if to == "" {
		return routing.Token{}, nil
	}
	if e == nil || e.backend != to {
		e = &entry{backend: to, gen: localGen | t.s.localSeq.Add(1)}
		t.put(user, e)
	}
	e.local++
	e.live = true
	t.setDirty(user, e)
	return routing.Token{Backend: to, Gen: e.gen}, nil
}

// Release implements routing.Table. The release is queued and sent with
// others in one round trip; while the store is down it is only counted
// here, and written back when the store returns.
func (t *Table) Release(ctx context.Context, user string, tok routing.Token, linger time.Duration) error {
	t.mu.Lock()
	e := t.cache[user]
	gen := tok.Gen
	if e != nil && e.owns(gen) {
		gen = e.gen
		if e.local > 0 {
			e.local--
		}
		if e.local == 0 {
			e.live = false // as far as this instance knows: the next acquire checks
		}
	}
	if t.s.Down() || gen&localGen != 0 {
		if e != nil {
			t.setDirty(user, e)
		}
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	args := t.args(strconv.FormatUint(gen, 10), t.s.fieldArg())
	if t.s.queueRelease(release{t: t, user: user, args: args}) {
		return nil
	}
	err := t.s.call(ctx, "release", func(ctx context.Context) error {
		return releaseScript.Run(ctx, t.s.c, []string{t.key(user)}, args...).Err()
	})
	if err != nil {
		t.markDirty(user)
		return fmt.Errorf("release %s: %w", user, err)
	}
	return nil
}

// markDirty notes that the store may not have the user's count right.
func (t *Table) markDirty(user string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.cache[user]; e != nil {
		t.setDirty(user, e)
	}
}

// Lookup implements routing.Table. The releases queued so far are sent
// first. While the store is down it answers from the cache.
func (t *Table) Lookup(ctx context.Context, user string) (string, int, bool, error) {
	if !t.s.Down() {
		t.s.flushReleases(ctx)
		var res []any
		err := t.s.call(ctx, "lookup", func(ctx context.Context) error {
			var err error
			res, err = lookupScript.Run(ctx, t.s.c, []string{t.key(user)}, t.args()...).Slice()
			return err
		})
		if err == nil {
			_, b, _, n := parseState(append([]any{int64(1)}, res...))
			return b, int(n), b != "", nil
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.cache[user]; e != nil {
		return e.backend, e.local, true, nil
	}
	return "", 0, false, nil
}

// Move implements routing.Table.
func (t *Table) Move(ctx context.Context, user, backend string, linger time.Duration) error {
	var gen uint64
	err := t.s.call(ctx, "move", func(ctx context.Context) error {
		g, err := moveScript.Run(ctx, t.s.c, []string{t.key(user), t.s.genKey},
			t.s.regPfx, linger.Milliseconds(), backend).Text()
		gen, _ = strconv.ParseUint(g, 10, 64)
		return err
	})
	if err != nil {
		return fmt.Errorf("move %s: %w", user, err)
	}
	t.mu.Lock()
	t.put(user, &entry{backend: backend, gen: gen})
	t.mu.Unlock()
	return nil
}

// sync writes back this instance's counts: every binding changed while the
// store was down, or (all) every binding with a local session, after a
// new registration. A user bound elsewhere meanwhile with live sessions
// there is handed to OnConflict.
func (t *Table) sync(ctx context.Context, all bool) error {
	type item struct {
		user, backend string
		local         int
		e             *entry
	}
	var todo []item
	t.mu.Lock()
	if all {
		for u, e := range t.cache {
			if e.dirty || e.local > 0 {
				todo = append(todo, item{u, e.backend, e.local, e})
			}
		}
	} else {
		for u := range t.dirty {
			if e := t.cache[u]; e != nil && e.dirty {
				todo = append(todo, item{u, e.backend, e.local, e})
			}
		}
	}
	t.mu.Unlock()
	field := t.s.field()
	for _, it := range todo {
		var res []any
		err := t.s.call(ctx, "sync", func(ctx context.Context) error {
			var err error
			res, err = syncScript.Run(ctx, t.s.c, []string{t.key(it.user), t.s.genKey},
				t.args(it.backend, field, it.local)...).Slice()
			return err
		})
		if err != nil {
			return err
		}
		applied, b, gen, _ := parseState(append(res, int64(0)))
		t.mu.Lock()
		e := t.cache[it.user]
		switch {
		case e == nil:
			delete(t.dirty, it.user)
		case e != it.e:
			// Replaced while this ran (a new binding): its own state counts.
		case applied:
			if e.gen != gen {
				// Sessions hold tokens of the earlier generations still.
				e.alias = append(e.alias, e.gen)
				if len(e.alias) > maxAlias {
					e.alias = e.alias[len(e.alias)-maxAlias:]
				}
				e.gen = gen
			}
			e.live = e.live || e.local > 0
			e.dirty = e.local != it.local // a change while this ran: again next time
			if !e.dirty {
				delete(t.dirty, it.user)
			}
		default:
			t.cache[it.user] = &entry{backend: b, gen: gen, live: true}
			delete(t.dirty, it.user)
		}
		t.mu.Unlock()
		if !applied {
			t.s.log.Warn("routing store: user placed here while the store was down is bound elsewhere; ending the sessions here",
				"pool", t.pool, "user", it.user, "here", it.backend, "store", b)
			if t.s.opts.OnConflict != nil {
				t.s.opts.OnConflict(t.pool, it.user)
			}
		}
	}
	return nil
}
