package routing

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrNoBackend is returned by Acquire when no backend can take the session.
var ErrNoBackend = errors.New("no backend available")

// Options configure a Pool. Zero values take the defaults noted.
type Options struct {
	Name     string
	Policies [numProtocols]Policy // default Sticky for IMAP is the zero value; set POP3/SMTP explicitly
	Linger   time.Duration        // how long a user stays bound after the last session; 0: not at all (config's default is 60 s)
	Pins     map[string]string    // routing key -> backend name; wins over hashing
	Rise     int                  // consecutive good checks to come up; default 2
	Fall     int                  // consecutive bad checks to go down; default 2
	Table    Table                // default NewMemTable(nil)

	// OnStateChange, when set, is called (outside the pool's lock) after a
	// backend's health for a protocol flips, with the reason.
	OnStateChange func(b *Backend, p Protocol, s State, reason string)
}

// Pool is a named set of backends with its policies and lease registry. All
// methods are safe for concurrent use.
type Pool struct {
	Name string

	mu       sync.Mutex
	opts     Options
	backends []*Backend
	byName   map[string]*Backend
	table    Table
	pins     map[string]string // routing key -> backend; config pins, then runtime changes
	// Sessions whose table release runs outside the lock, not yet done.
	inRelease map[userAt]int
}

// NewPool builds a pool. Backend names must be unique.
func NewPool(opts Options, specs []BackendSpec) (*Pool, error) {
	if opts.Rise <= 0 {
		opts.Rise = 2
	}
	if opts.Fall <= 0 {
		opts.Fall = 2
	}
	if opts.Table == nil {
		opts.Table = NewMemTable(nil)
	}
	p := &Pool{Name: opts.Name, opts: opts, table: opts.Table, byName: make(map[string]*Backend)}
	p.pins = make(map[string]string, len(opts.Pins))
	p.inRelease = make(map[userAt]int)
	for i, s := range specs {
		if _, dup := p.byName[s.Name]; dup {
			return nil, fmt.Errorf("pool %s: duplicate backend %q", opts.Name, s.Name)
		}
		b := &Backend{Name: s.Name, index: i, seed: hashString(s.Name)}
		b.set(s)
		p.backends = append(p.backends, b)
		p.byName[s.Name] = b
	}
	for u, name := range opts.Pins {
		if p.byName[name] == nil {
			return nil, fmt.Errorf("pool %s: pin %q names unknown backend %q", opts.Name, u, name)
		}
		p.pins[u] = name
	}
	return p, nil
}

// set applies a spec to b. A weight the spec leaves as it was keeps the
// weight set at runtime. The caller holds p.mu (or owns b alone).
func (b *Backend) set(s BackendSpec) {
	d := s.Data
	b.data.Store(&d)
	b.serves, b.disabled, b.retired = s.Serves, s.Disabled, false
	if w := max(s.Weight, 0); w != b.baseWeight {
		b.weight, b.baseWeight = w, w
	}
}

// Reconfigure applies a new config to the pool in place, so that its leases,
// bindings, health, drains and runtime pins carry over (a reload). opts
// replaces the policies, linger, config pins and rise/fall (Table and
// OnStateChange stay as NewPool set them). Backends are matched by name: new
// ones are added up with no sessions; kept ones take the spec's data,
// protocols, disabled flag and (when it changed in the spec) weight; removed
// ones take no new user but stay, retired, for the users whose sessions are
// still there, so no user is ever split: until those sessions end (or are
// kicked) Backend still finds them. It changes nothing and returns the error
// when the specs have duplicate names or the pins name unknown backends.
func (p *Pool) Reconfigure(opts Options, specs []BackendSpec) error {
	names := make(map[string]bool, len(specs))
	for _, s := range specs {
		if names[s.Name] {
			return fmt.Errorf("pool %s: duplicate backend %q", opts.Name, s.Name)
		}
		names[s.Name] = true
	}
	for u, name := range opts.Pins {
		if !names[name] {
			return fmt.Errorf("pool %s: pin %q names unknown backend %q", opts.Name, u, name)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if opts.Rise <= 0 {
		opts.Rise = 2
	}
	if opts.Fall <= 0 {
		opts.Fall = 2
	}
	// Pins: the new config's, with the runtime changes on top.
	pins := make(map[string]string, len(opts.Pins))
	for u, name := range opts.Pins {
		pins[u] = name
	}
	for u, name := range p.pins {
		if p.opts.Pins[u] != name && names[name] {
			pins[u] = name // set at runtime
		}
	}
	for u := range p.opts.Pins {
		if _, ok := p.pins[u]; !ok {
			delete(pins, u) // removed at runtime
		}
	}
	// Field by field: Table and OnStateChange are read without the lock.
	p.opts.Policies, p.opts.Linger, p.opts.Pins = opts.Policies, opts.Linger, opts.Pins
	p.opts.Rise, p.opts.Fall = opts.Rise, opts.Fall
	p.pins = pins
	backends := make([]*Backend, 0, len(specs))
	keep := make(map[string]*Backend, len(specs))
	for i, s := range specs {
		b := p.byName[s.Name]
		if b == nil {
			b = &Backend{Name: s.Name, seed: hashString(s.Name)}
		}
		b.index = i
		b.set(s)
		backends = append(backends, b)
		keep[s.Name] = b
	}
	for name, b := range p.byName {
		if keep[name] == nil && b.leases.n > 0 {
			b.retired = true
			keep[name] = b
		}
	}
	p.backends, p.byName = backends, keep
	return nil
}

// Backends returns the pool's backends in config order, without the retired
// ones (see Reconfigure). The slice is the caller's to read, never changed.
func (p *Pool) Backends() []*Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backends
}

// Backend returns the backend called name, or nil. A backend removed by
// Reconfigure is still found while sessions hold it.
func (p *Pool) Backend(name string) *Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byName[name]
}

// Lookup returns the user's binding in the lease table.
func (p *Pool) Lookup(ctx context.Context, user string) (backend string, live int, ok bool, err error) {
	return p.table.Lookup(ctx, user)
}

// usable reports whether b may carry a session of proto at all: it serves
// the protocol, is enabled and is not down. The caller holds p.mu.
func (p *Pool) usable(b *Backend, proto Protocol) bool {
	return b.serves[proto] && !b.disabled && !b.health[proto].down
}

// open reports whether hashing and the policies may put a user with no
// live session on b.
func (p *Pool) open(b *Backend, proto Protocol) bool {
	return p.accepting(b, proto) && b.weight > 0
}

// accepting reports whether b takes users brought to it by a pin: weight
// 0 keeps a backend out of hashing, not away from its pinned users.
func (p *Pool) accepting(b *Backend, proto Protocol) bool {
	return p.usable(b, proto) && !b.draining && !b.retired
}

// Acquire picks the backend for a new session of proto and returns its
// lease. user is the routing key; empty for sessions that are not tied to a
// user (SMTP). Backends in exclude (ones that just failed for this session)
// are not chosen. The rules, in order:
//
//  1. A user with live sessions on a usable backend goes there, even when it
//     is draining or hashing would now say otherwise. If that backend is in
//     exclude, the session fails rather than split the user.
//  2. A user whose live backend is down is moved; the user's sessions still
//     held on it are killed (only when there is somewhere to move to). With
//     a table shared by several instances, only when every live session
//     there is this pool's: another instance's sessions hold the user until
//     that instance ends them.
//  3. A sticky user still lingering on an open backend goes back there.
//  4. A pinned user goes to the pin if it is up and not draining.
//  5. Anyone else goes where the protocol's policy says.
//
// Weight 0 keeps a backend out of rules 3 and 5 only: live sessions and
// pins still bring users to it.
//
// The pool's lock is not held while the table runs (a shared store is a
// network round trip): the decision takes it briefly, and the lease is
// registered under it afterwards. An error from the table wraps its cause
// (ErrStoreDown when the store refuses); ErrNoBackend when nothing fits.
func (p *Pool) Acquire(ctx context.Context, proto Protocol, user string, exclude ...*Backend) (*Lease, error) {
	if user == "" {
		p.mu.Lock()
		l := p.register(p.choose(proto, "", exclude), user, proto, Token{})
		p.mu.Unlock()
		if l == nil {
			return nil, ErrNoBackend
		}
		return l, nil
	}
	// The backend chosen may go down while the table runs: Observe kills
	// the leases it knows of, and this one would escape it. Then the
	// session is given back and the decision made again.
	for range 3 {
		l, err := p.acquireUser(ctx, proto, user, exclude)
		if !errors.Is(err, errWentDown) {
			return l, err
		}
	}
	return nil, ErrNoBackend
}

// errWentDown is acquireUser's answer when the backend it chose went down
// before the lease was registered.
var errWentDown = errors.New("backend went down while acquiring")

func (p *Pool) acquireUser(ctx context.Context, proto Protocol, user string, exclude []*Backend) (*Lease, error) {
	k := picker{p: p, proto: proto, user: user, exclude: exclude}
	tok, err := p.table.Acquire(ctx, user, k.run)
	if err != nil {
		return nil, fmt.Errorf("routing table: %w", err)
	}
	if tok.Backend == "" {
		return nil, ErrNoBackend
	}
	var kill []func()
	p.mu.Lock()
	chosen := p.byName[tok.Backend]
	var l *Lease
	if chosen != nil && p.usable(chosen, proto) {
		l = p.register(chosen, user, proto, tok)
		if k.moveFrom != nil {
			kill = p.detachUser(k.moveFrom, user, kill)
		}
	}
	linger := p.opts.Linger
	p.mu.Unlock()
	runKills(kill)
	if l == nil {
		p.table.Release(ctx, user, tok, linger)
		return nil, errWentDown
	}
	return l, nil
}

// register adds a live lease on b (nil: none). The caller holds p.mu.
func (p *Pool) register(b *Backend, user string, proto Protocol, tok Token) *Lease {
	if b == nil {
		return nil
	}
	l := &Lease{Backend: b, User: user, Proto: proto, pool: p, tok: tok}
	b.leases.add(l)
	b.sessions.Add(1)
	return l
}

// picker is the decision Acquire hands to Table.Acquire. decide only
// decides: a Table may call it more than once (a shared store retrying its
// compare-and-set), so the sessions to kill are acted on after the table
// has answered.
type picker struct {
	p        *Pool
	proto    Protocol
	user     string
	exclude  []*Backend
	moveFrom *Backend // the user's live backend, down for proto
}

// run applies rules 1 to 5 of Acquire to the user's current binding, under
// the pool's lock.
func (k *picker) run(cur string, live int, ok bool) string {
	p := k.p
	p.mu.Lock()
	defer p.mu.Unlock()
	k.moveFrom = nil
	if b := p.byName[cur]; ok && b != nil {
		switch {
		case live > 0 && p.usable(b, k.proto):
			if excluded(b, k.exclude) {
				return "" // never split the user
			}
			return cur
		case live > 0 && p.servingUser(b, k.user):
			return "" // healthy sessions of another protocol hold the user there
		case live > 0 && p.userLeases(b, k.user) < live:
			// Other instances sharing the table hold sessions there, and
			// only they can end them: the user moves when they have
			// (their backend is down for them too, or soon).
			return ""
		case live > 0:
			k.moveFrom = b
		case p.opts.Policies[k.proto] == Sticky && p.open(b, k.proto) && !excluded(b, k.exclude):
			return cur
		}
	}
	if c := p.choose(k.proto, k.user, k.exclude); c != nil {
		return c.Name
	}
	return ""
}

// servingUser reports whether b still serves one of user's live sessions:
// it is up for that session's protocol. Such a user is not moved (that
// would kill a working session, say IMAP, to place a POP3 login whose
// protocol is down there); the new session fails instead. The caller
// holds p.mu.
func (p *Pool) servingUser(b *Backend, user string) bool {
	for l := range b.leases.all() {
		if l.User == user && p.usable(b, l.Proto) {
			return true
		}
	}
	return false
}

// userLeases counts the user's live leases on b in this pool, and those
// on their way out of the table. The caller holds p.mu.
func (p *Pool) userLeases(b *Backend, user string) int {
	n := p.inRelease[userAt{b, user}]
	for l := range b.leases.all() {
		if l.User == user {
			n++
		}
	}
	return n
}

func excluded(b *Backend, list []*Backend) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

// choose applies the pin and the policy. The caller holds p.mu.
func (p *Pool) choose(proto Protocol, user string, exclude []*Backend) *Backend {
	if pin := p.byName[p.pins[user]]; user != "" && pin != nil && p.accepting(pin, proto) && !excluded(pin, exclude) {
		return pin
	}
	switch p.opts.Policies[proto] {
	case Sticky:
		if user != "" {
			return p.rendezvous(proto, user, exclude)
		}
		return p.roundRobin(proto, exclude)
	case LeastConn:
		return p.leastConn(proto, exclude)
	}
	return p.roundRobin(proto, exclude)
}

// detachUser kills the user's leases on b (b is down). It appends their
// callbacks to kill, to run after the lock is released.
func (p *Pool) detachUser(b *Backend, user string, kill []func()) []func() {
	for l := range b.leases.all() {
		if l.User == user {
			kill = p.detach(l, kill)
		}
	}
	return kill
}

// detach removes l from the live registry and queues its kill callback.
// The callback is read here, under the lock: a session may be calling
// OnKill right now, and then OnKill runs it instead (l.killed is set), so
// it runs exactly once. The lease stops counting in the table now, not when the dying session
// gets round to Release: by then the user may have moved away and back,
// and a late release would take a newer session's count (the user would
// look idle while live, and could be split). The caller holds p.mu.
func (p *Pool) detach(l *Lease, kill []func()) []func() {
	l.Backend.leases.remove(l)
	l.Backend.sessions.Add(-1)
	l.killed = true
	if l.User != "" {
		kill = append(kill, p.releasing(l))
	}
	if l.onKill != nil {
		kill = append(kill, l.onKill) // again, if it was kicked before
	}
	return kill
}

func runKills(kill []func()) {
	for _, f := range kill {
		f()
	}
}

// Lease is one live session on a backend. Release it exactly once when the
// session ends (extra calls are harmless).
type Lease struct {
	Backend *Backend
	User    string
	Proto   Protocol

	pool *Pool
	tok  Token // what the table acquired; zero for sessions of no user
	// Guarded by pool.mu.
	prev, next *Lease // in Backend.leases while live
	onKill     func()
	killed     bool // detached: its backend went down
	kicked     bool // told to end, still live until Release
	released   bool
}

// OnKill sets the function routing calls when the session must end now
// (its backend went down, or an operator kicked it). f must not block; it
// typically cancels the session's context, and may be called twice (a
// kick, then the backend going down). If the lease was already killed, f
// runs at once.
func (l *Lease) OnKill(f func()) {
	l.pool.mu.Lock()
	l.onKill = f
	killed := (l.killed || l.kicked) && !l.released
	l.pool.mu.Unlock()
	if killed {
		f()
	}
}

// Release ends the session's hold on its backend. The user stays bound for
// the pool's linger.
func (l *Lease) Release() {
	p := l.pool
	p.mu.Lock()
	if l.released {
		p.mu.Unlock()
		return
	}
	l.released = true
	if l.killed {
		p.mu.Unlock()
		return // detach already released it
	}
	l.Backend.leases.remove(l)
	l.Backend.sessions.Add(-1)
	var release func()
	if l.User != "" {
		release = p.releasing(l)
	}
	p.mu.Unlock()
	if release != nil {
		release()
	}
}

// releasing returns the function that gives l's session back to the
// table, to be run outside the pool's lock (a store call). Until it has,
// the session still counts as this pool's in userLeases: the table counts
// it too. The caller holds p.mu.
func (p *Pool) releasing(l *Lease) func() {
	k := userAt{l.Backend, l.User}
	p.inRelease[k]++
	linger := p.opts.Linger
	return func() {
		p.table.Release(context.Background(), l.User, l.tok, linger)
		p.mu.Lock()
		if p.inRelease[k]--; p.inRelease[k] <= 0 {
			delete(p.inRelease, k)
		}
		p.mu.Unlock()
	}
}

// userAt names a user's sessions on one backend.
type userAt struct {
	b    *Backend
	user string
}
