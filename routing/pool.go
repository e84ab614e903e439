package routing

import (
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
	pick     picker
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
	if err := checkSpecs(opts, specs); err != nil {
		return nil, err
	}
	p := &Pool{Name: opts.Name, opts: opts, table: opts.Table, byName: make(map[string]*Backend)}
	p.pick = picker{p: p}
	p.pick.decide = p.pick.run
	for _, s := range specs {
		b := &Backend{Name: s.Name, seed: hashString(s.Name)}
		b.set(s)
		p.backends = append(p.backends, b)
		p.byName[s.Name] = b
	}
	return p, nil
}

// checkSpecs refuses duplicate backend names and pins to unknown backends.
func checkSpecs(opts Options, specs []BackendSpec) error {
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
	return nil
}

// set applies a spec to b. A weight the spec leaves as it was keeps the
// weight set at runtime. The caller holds p.mu (or owns b alone).
func (b *Backend) set(s BackendSpec) {
	d := s.Data
	b.data.Store(&d)
	b.serves, b.disabled, b.retired = s.Serves, s.Disabled, false
	if w := max(s.Weight, 0); w != b.cfgWeight {
		b.weight, b.cfgWeight = w, w
	}
}

// Reconfigure applies a new config to the pool in place, so that its leases,
// bindings, health and drains carry over (a reload). opts replaces the
// policies, linger, pins and rise/fall (Table and OnStateChange stay as
// NewPool set them). Backends are matched by name: new ones are added up
// with no sessions; kept ones take the spec's data, protocols, disabled flag
// and (when it changed in the spec) weight; removed ones take no new user
// but stay, retired, for the users whose sessions are still there, so no
// user is ever split: until those sessions end (or are kicked) Backend
// still finds them. It changes nothing and returns the error when the specs
// have duplicate names or the pins name unknown backends.
func (p *Pool) Reconfigure(opts Options, specs []BackendSpec) error {
	if err := checkSpecs(opts, specs); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	opts.Table, opts.OnStateChange = p.opts.Table, p.opts.OnStateChange
	if opts.Rise <= 0 {
		opts.Rise = 2
	}
	if opts.Fall <= 0 {
		opts.Fall = 2
	}
	p.opts = opts
	backends := make([]*Backend, 0, len(specs))
	keep := make(map[string]*Backend, len(specs))
	for _, s := range specs {
		b := p.byName[s.Name]
		if b == nil {
			b = &Backend{Name: s.Name, seed: hashString(s.Name)}
		}
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
func (p *Pool) Lookup(user string) (backend string, live int, ok bool) {
	return p.table.Lookup(user)
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
// 0 keeps a backend out of hashing, not away from its pinned users. A
// retired backend (removed by Reconfigure) takes no new user at all.
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
//     held on it are killed (only when there is somewhere to move to).
//  3. A sticky user still lingering on an open backend goes back there.
//  4. A pinned user goes to the pin if it is open.
//
// Weight 0 keeps a backend out of rules 3 and 5 only: live sessions and
// pins still bring users to it.
//  5. Anyone else goes where the protocol's policy says.
func (p *Pool) Acquire(proto Protocol, user string, exclude ...*Backend) (*Lease, error) {
	var kill []func()
	p.mu.Lock()
	var chosen *Backend
	if user == "" {
		chosen = p.choose(proto, "", exclude)
	} else {
		k := &p.pick
		k.proto, k.user, k.exclude = proto, user, exclude
		if p.table.Acquire(user, k.decide) != "" {
			chosen = k.chosen
		}
		if chosen != nil && k.moveFrom != nil {
			kill = p.detachUser(k.moveFrom, user, kill)
		}
		k.reset()
	}
	var l *Lease
	if chosen != nil {
		l = &Lease{Backend: chosen, User: user, Proto: proto, pool: p}
		chosen.leases.add(l)
		chosen.sessions.Add(1)
	}
	p.mu.Unlock()
	runKills(kill)
	if l == nil {
		return nil, ErrNoBackend
	}
	return l, nil
}

// picker is the decision Acquire hands to Table.Acquire. The pool keeps one,
// guarded by p.mu, with its decide method value bound once, so a session
// costs no closure allocation. decide only decides: a Table may call it more
// than once (a shared store retrying its compare-and-set), so the sessions
// to kill are acted on after the table has answered.
type picker struct {
	p        *Pool
	decide   func(cur string, live int, ok bool) string // bound to run
	proto    Protocol
	user     string
	exclude  []*Backend
	chosen   *Backend
	moveFrom *Backend // the user's live backend, down for proto
}

func (k *picker) reset() {
	k.user, k.exclude, k.chosen, k.moveFrom = "", nil, nil, nil
}

// run applies rules 1 to 5 of Acquire to the user's current binding.
func (k *picker) run(cur string, live int, ok bool) string {
	p := k.p
	k.chosen, k.moveFrom = nil, nil
	if b := p.byName[cur]; ok && b != nil {
		switch {
		case live > 0 && p.usable(b, k.proto):
			if excluded(b, k.exclude) {
				return "" // never split the user
			}
			k.chosen = b
			return cur
		case live > 0 && p.servingUser(b, k.user):
			return "" // healthy sessions of another protocol hold the user there
		case live > 0:
			k.moveFrom = b
		case p.opts.Policies[k.proto] == Sticky && p.open(b, k.proto) && !excluded(b, k.exclude):
			k.chosen = b
			return cur
		}
	}
	k.chosen = p.choose(k.proto, k.user, k.exclude)
	if k.chosen == nil {
		return ""
	}
	return k.chosen.Name
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
	if pin := p.byName[p.opts.Pins[user]]; user != "" && pin != nil && p.accepting(pin, proto) && !excluded(pin, exclude) {
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
		p.table.Release(l.User, l.Backend.Name, p.opts.Linger)
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
	defer p.mu.Unlock()
	if l.released {
		return
	}
	l.released = true
	if l.killed {
		return // detach already released it
	}
	l.Backend.leases.remove(l)
	l.Backend.sessions.Add(-1)
	if l.User != "" {
		p.table.Release(l.User, l.Backend.Name, p.opts.Linger)
	}
}
