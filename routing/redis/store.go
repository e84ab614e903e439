// Package redis keeps mailproxy's routing state in Redis (or Valkey), so
// that several active instances make one decision per user and admin
// changes survive restarts. It implements routing.Table (one binding key
// per user, changed only by atomic scripts) and routing.StateStore (drains,
// weights and pins in one hash per pool), registers this instance with an
// expiring key it refreshes, fences itself when it cannot, and falls back
// to cached bindings or the hash while the store is down.
package redis

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"mailproxy/routing"
)

// Options configure a Store. Zero values take the defaults noted.
type Options struct {
	// Addrs are host:port of the Redis server; several with MasterName are
	// Sentinels, several without are cluster nodes.
	Addrs      []string
	MasterName string // Sentinel: the monitored master's name
	Password   string
	TLS        *tls.Config // nil: plain TCP
	Prefix     string      // key prefix; default "mailproxy:"
	Instance   string      // this instance's name in the store; required
	LeaseTTL   time.Duration
	// Refuse makes new logins fail while the store is down ([store]
	// on_store_loss = "refuse"); default: cached bindings, else the hash.
	Refuse bool
	// Timeout bounds one store call; default 500ms.
	Timeout time.Duration
	Logger  *slog.Logger
	// Observer gets latencies, errors and fallback decisions; nil: none.
	Observer Observer
	// OnFence is called once per outage, when the registration could not
	// be refreshed for 3/4 of LeaseTTL: end every session whose user the
	// store counts, before the store forgets them.
	OnFence func()
	// OnState is called when another instance changed the admin state (and
	// after the store came back): load it and apply it.
	OnState func()
	// OnKick is called for a kick another instance broadcast.
	OnKick func(Kick)
	// OnConflict is called when, after the store came back, a user this
	// instance placed while it was down is bound elsewhere with live
	// sessions: end the user's sessions here.
	OnConflict func(pool, user string)
}

// Observer receives the store's measurements (the proxy's metrics).
type Observer interface {
	// Call reports one store call: its operation, duration and error.
	Call(op string, d time.Duration, err error)
	// Fallback reports a decision made without the store: "cached",
	// "hash" or "refused".
	Fallback(kind string)
	// Up reports the store's reachability when it changes.
	Up(up bool)
}

// Kick is a kick broadcast to every instance: all sessions on Backend, or
// (User set) the user's sessions except those on Keep.
type Kick struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend,omitempty"`
	User    string `json:"user,omitempty"`
	Keep    string `json:"keep,omitempty"`
	From    string `json:"from"`
}

type event struct {
	Type string `json:"type"` // state | kick
	From string `json:"from"`
	Kick *Kick  `json:"kick,omitempty"`
}

// Store is one instance's connection to the shared routing state.
type Store struct {
	c    goredis.UniversalClient
	opts Options
	log  *slog.Logger
	obs  Observer

	prefix  string
	regKey  string
	regPfx  string
	genKey  string
	channel string

	down      atomic.Bool
	fenced    atomic.Bool
	nameTaken atomic.Bool  // logged that another instance has this name
	lastOK    atomic.Int64 // unix nanos when the last successful refresh was sent
	localSeq  atomic.Uint64
	mu        sync.Mutex
	inc       string              // incarnation; guarded by mu
	fieldName atomic.Pointer[any] // this incarnation's count field (a string); set with inc
	tables    map[string]*Table

	acq batcher // acquires waiting for a round trip (batch.go)

	flushMu sync.Mutex // held while a batch is sent: a flush returns after every earlier release arrived
	relMu   sync.Mutex
	relQ    []release     // releases not yet sent; guarded by relMu
	relWake chan struct{} // a release was queued
}

// release is one session's release waiting to be sent.
type release struct {
	t    *Table
	user string
	args []any
}

// releaseDelay is how long a release may wait for others to share its
// round trip: its user stays bound that much longer, which never splits
// anyone.
const releaseDelay = 10 * time.Millisecond

// maxQueued bounds the releases waiting to be sent; past it, a release is
// sent at once.
const maxQueued = 4096

var _ routing.StateStore = (*Store)(nil)

// New connects (lazily) and returns the store. Run must run for it to
// register and refresh.
func New(opts Options) (*Store, error) {
	if opts.Instance == "" {
		return nil, errors.New("redis store: no instance name")
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 500 * time.Millisecond
	}
	if opts.Prefix == "" {
		opts.Prefix = "mailproxy:"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	prefix := opts.Prefix
	if len(opts.Addrs) > 1 && opts.MasterName == "" && !strings.Contains(prefix, "{") {
		// Cluster: the scripts read registration keys they are not handed,
		// so every key must sit in one slot.
		prefix = "{" + prefix + "}"
	}
	s := &Store{
		opts: opts, log: opts.Logger, obs: opts.Observer, prefix: prefix,
		regPfx: prefix + "i:", regKey: prefix + "i:" + opts.Instance,
		genKey: prefix + "gen", channel: prefix + "events",
		tables: map[string]*Table{}, inc: newIncarnation(), relWake: make(chan struct{}, 1),
	}
	uo := &goredis.UniversalOptions{
		Addrs: opts.Addrs, MasterName: opts.MasterName, Password: opts.Password,
		DialTimeout: opts.Timeout, ReadTimeout: opts.Timeout, WriteTimeout: opts.Timeout,
		MaxRetries:            -1, // a failed call falls back at once; Run retries
		ContextTimeoutEnabled: true,
	}
	if opts.TLS != nil {
		uo.Dialer = tlsDialer(opts.TLS, opts.Timeout)
	}
	s.setField(s.inc)
	s.c = goredis.NewUniversalClient(uo)
	s.down.Store(true) // until the first registration
	return s, nil
}

// tlsDialer dials TLS with the server name taken from each address, so
// that one config verifies a single server, Sentinels and the masters they
// name, or cluster nodes.
func tlsDialer(cfg *tls.Config, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c := cfg.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(addr)
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: c}
		return d.DialContext(ctx, network, addr)
	}
}

func newIncarnation() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Close closes the client. The registration is removed first (best
// effort), so this instance's counts stop holding users at once.
func (s *Store) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	s.c.Del(ctx, s.regKey)
	return s.c.Close()
}

// Down reports whether the store is unreachable (decisions fall back).
func (s *Store) Down() bool { return s.down.Load() }

// Table returns the routing.Table of one pool; linger is the pool's.
func (s *Store) Table(pool string, linger time.Duration) *Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[pool]
	if t == nil {
		t = &Table{s: s, pool: pool, keyPfx: s.prefix + "u:" + pool + ":", linger: linger, cache: map[string]*entry{}, dirty: map[string]struct{}{}}
		t.head = [2]any{s.regPfx, linger.Milliseconds()}
		s.tables[pool] = t
	}
	return t
}

// field is this incarnation's count field in a user's binding. Read on
// every acquire and release, so it is kept ready instead of built.
func (s *Store) field() string { return (*s.fieldName.Load()).(string) }

// fieldArg is field as a script argument, boxed once.
func (s *Store) fieldArg() any { return *s.fieldName.Load() }

// setField makes inc's field the one in use. The caller holds s.mu, or
// has not shared s yet.
func (s *Store) setField(inc string) {
	var f any = "l:" + inc + ":" + s.opts.Instance
	s.fieldName.Store(&f)
}

// call runs one store operation under the call timeout and reports it.
// A failure that is not the script's answer marks the store down.
func (s *Store) call(ctx context.Context, op string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	if errors.Is(err, goredis.Nil) {
		err = nil
	}
	s.obs.Call(op, time.Since(start), err)
	if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
		s.setDown(err) // not the caller giving up: the store did not answer
	}
	return err
}

func (s *Store) setDown(cause error) {
	if s.down.CompareAndSwap(false, true) {
		policy := "cached bindings, else the hash"
		if s.opts.Refuse {
			policy = "refusing new logins"
		}
		s.log.Warn("routing store unreachable: live sessions continue, new logins use "+policy, "err", cause)
		s.obs.Up(false)
	}
}

// Run registers this instance and keeps the registration fresh until ctx
// ends; it also listens for other instances' events. While the store is
// down it retries, fences this instance after 3/4 of lease_ttl, and when
// the store is back publishes what changed meanwhile.
func (s *Store) Run(ctx context.Context) {
	go s.listen(ctx)
	go s.sendReleases(ctx)
	tick := time.NewTicker(max(s.opts.LeaseTTL/5, 10*time.Millisecond))
	defer tick.Stop()
	s.lastOK.Store(time.Now().UnixNano())
	poll := 0
	for {
		s.refresh(ctx)
		if poll++; poll%5 == 0 && !s.down.Load() && s.opts.OnState != nil {
			s.opts.OnState() // events may be missed; the state is re-read now and then
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// refresh extends (or makes anew) the registration, and handles the way
// back from an outage.
func (s *Store) refresh(ctx context.Context) {
	sent := time.Now()
	s.mu.Lock()
	inc := s.inc
	s.mu.Unlock()
	var ok int64
	err := s.call(ctx, "refresh", func(ctx context.Context) error {
		var err error
		ok, err = refreshScript.Run(ctx, s.c, []string{s.regKey}, inc, s.opts.LeaseTTL.Milliseconds()).Int64()
		return err
	})
	if err != nil {
		s.maybeFence(sent)
		return
	}
	fresh := ok == 0
	if fresh {
		// Not registered (first start, or the registration expired, or
		// the store lost its data): a new incarnation, so that no count
		// left under the old one can come back to life.
		s.mu.Lock()
		if s.inc == inc {
			s.inc = newIncarnation()
			s.setField(s.inc)
		}
		inc = s.inc
		s.mu.Unlock()
		var set bool
		err = s.call(ctx, "register", func(ctx context.Context) error {
			var err error
			set, err = s.c.SetNX(ctx, s.regKey, inc, s.opts.LeaseTTL).Result()
			return err
		})
		if err != nil {
			s.maybeFence(sent)
			return
		}
		if !set {
			// Another live instance registered under this name: counting
			// beside it would mix the two instances' sessions.
			if s.nameTaken.CompareAndSwap(false, true) {
				s.log.Error("routing store: this instance's name is registered by another live instance; give each its own [store] instance",
					"instance", s.opts.Instance)
			}
			s.setDown(fmt.Errorf("instance name %q taken", s.opts.Instance))
			s.maybeFence(sent)
			return
		}
	}
	s.lastOK.Store(sent.UnixNano())
	s.nameTaken.Store(false)
	if s.down.Load() || fresh {
		s.recover(ctx, fresh)
		return
	}
	// Counts that did not reach the store (a release that failed, sessions
	// placed while a recovery ran) are written back on the next tick.
	for _, t := range s.tableList() {
		if t.sync(ctx, false) != nil {
			return
		}
	}
}

func (s *Store) tableList() []*Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Table, 0, len(s.tables))
	for _, t := range s.tables {
		out = append(out, t)
	}
	return out
}

// maybeFence ends the counted sessions once 3/4 of lease_ttl passed since
// the last refresh that reached the store: after lease_ttl the store
// would forget them, and another instance could place their users anew.
func (s *Store) maybeFence(now time.Time) {
	since := now.Sub(time.Unix(0, s.lastOK.Load()))
	if since < s.opts.LeaseTTL*3/4 || !s.fenced.CompareAndSwap(false, true) {
		return
	}
	s.log.Warn("routing store unreachable for most of lease_ttl: closing this instance's user sessions (fencing)",
		"unreachable", since.Round(time.Millisecond), "lease_ttl", s.opts.LeaseTTL)
	if s.opts.OnFence != nil {
		s.opts.OnFence()
	}
}

// recover runs when the store answers again (or this instance registered
// anew): every count it holds locally is written back, conflicts end
// local sessions, and the admin state is re-read.
func (s *Store) recover(ctx context.Context, all bool) {
	for _, t := range s.tableList() {
		if err := t.sync(ctx, all); err != nil {
			return // still down; the next refresh tries again
		}
	}
	s.fenced.Store(false)
	if s.down.CompareAndSwap(true, false) {
		s.log.Info("routing store reachable", "instance", s.opts.Instance)
		s.obs.Up(true)
	}
	if s.opts.OnState != nil {
		s.opts.OnState()
	}
}

// listen delivers other instances' events until ctx ends. go-redis
// resubscribes after a lost connection; events sent meanwhile are lost,
// which the periodic state reload covers for admin state.
func (s *Store) listen(ctx context.Context) {
	ps := s.c.Subscribe(ctx, s.channel)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			var ev event
			if json.Unmarshal([]byte(m.Payload), &ev) != nil || ev.From == s.opts.Instance {
				continue
			}
			switch {
			case ev.Type == "state" && s.opts.OnState != nil:
				s.opts.OnState()
			case ev.Type == "kick" && ev.Kick != nil && s.opts.OnKick != nil:
				s.opts.OnKick(*ev.Kick)
			}
		}
	}
}

// queueRelease queues a release for the next batch, and reports false when
// the queue is full (the caller sends it itself).
func (s *Store) queueRelease(r release) bool {
	s.relMu.Lock()
	defer s.relMu.Unlock()
	if len(s.relQ) >= maxQueued {
		return false
	}
	s.relQ = append(s.relQ, r)
	if len(s.relQ) == 1 {
		select {
		case s.relWake <- struct{}{}:
		default:
		}
	}
	return true
}

// sendReleases sends queued releases until ctx ends. Releases are not on
// any login's path: batching them into one pipelined round trip halves
// the store calls per session. A release sent a moment late only keeps
// its user bound a moment longer.
func (s *Store) sendReleases(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.relWake:
		}
		// Let the releases of a few milliseconds gather: one round trip
		// then carries many.
		t.Reset(releaseDelay)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.flushReleases(ctx)
	}
}

// flushReleases sends every queued release in one pipeline. Those that
// fail are left to the next sync, as releases made while the store was
// down are.
func (s *Store) flushReleases(ctx context.Context) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.relMu.Lock()
	q := s.relQ
	s.relQ = nil
	s.relMu.Unlock()
	if len(q) == 0 {
		return
	}
	var cmds []goredis.Cmder
	err := s.call(ctx, "release", func(ctx context.Context) error {
		pipe := s.c.Pipeline()
		for _, r := range q {
			releaseScript.EvalSha(ctx, pipe, []string{r.t.key(r.user)}, r.args...)
		}
		var err error
		cmds, err = pipe.Exec(ctx)
		if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
			// The store restarted and lost its scripts: load it, send again.
			if err = releaseScript.Load(ctx, s.c).Err(); err == nil {
				pipe := s.c.Pipeline()
				for _, r := range q {
					releaseScript.EvalSha(ctx, pipe, []string{r.t.key(r.user)}, r.args...)
				}
				cmds, err = pipe.Exec(ctx)
			}
		}
		return err
	})
	for i, r := range q {
		if err != nil || i < len(cmds) && cmds[i].Err() != nil {
			r.t.markDirty(r.user)
		}
	}
}

func (s *Store) publish(ctx context.Context, ev event) error {
	ev.From = s.opts.Instance
	b, _ := json.Marshal(ev)
	return s.call(ctx, "publish", func(ctx context.Context) error {
		return s.c.Publish(ctx, s.channel, b).Err()
	})
}

// BroadcastKick tells every other instance to run k.
func (s *Store) BroadcastKick(ctx context.Context, k Kick) error {
	k.From = s.opts.Instance
	return s.publish(ctx, event{Type: "kick", Kick: &k})
}

func (s *Store) adminKey(pool string) string { return s.prefix + "admin:" + pool }

// Load implements routing.StateStore: the admin state of every pool this
// instance has a table for.
func (s *Store) Load(ctx context.Context) (routing.AdminState, error) {
	s.mu.Lock()
	pools := make([]string, 0, len(s.tables))
	for p := range s.tables {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	var st routing.AdminState
	for _, p := range pools {
		var m map[string]string
		err := s.call(ctx, "load", func(ctx context.Context) error {
			var err error
			m, err = s.c.HGetAll(ctx, s.adminKey(p)).Result()
			return err
		})
		if err != nil {
			return routing.AdminState{}, fmt.Errorf("load admin state: %w", err)
		}
		for f, v := range m {
			kind, name, ok := strings.Cut(f, ":")
			if !ok {
				continue
			}
			if err := st.Apply(routing.Change{Pool: p, Kind: kind, Name: name, Value: v}); err != nil {
				s.log.Warn("routing store: skipping admin state field", "pool", p, "field", f, "err", err)
			}
		}
	}
	return st, nil
}

// Apply implements routing.StateStore: one field of the pool's admin hash,
// then an event so that the other instances apply it at once.
func (s *Store) Apply(ctx context.Context, c routing.Change) error {
	if err := (&routing.AdminState{}).Apply(c); err != nil {
		return err
	}
	f := c.Kind + ":" + c.Name
	err := s.call(ctx, "apply", func(ctx context.Context) error {
		if c.Kind == "drain" && c.Value == "" {
			return s.c.HDel(ctx, s.adminKey(c.Pool), f).Err()
		}
		return s.c.HSet(ctx, s.adminKey(c.Pool), f, c.Value).Err()
	})
	if err != nil {
		return fmt.Errorf("store admin change: %w", err)
	}
	s.publish(ctx, event{Type: "state"}) // the periodic reload covers a lost one
	return nil
}

type nopObserver struct{}

func (nopObserver) Call(string, time.Duration, error) {}
func (nopObserver) Fallback(string)                   {}
func (nopObserver) Up(bool)                           {}
