package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailproxy/proxy/config"
	"mailproxy/routing"
	rstore "mailproxy/routing/redis"
)

// setupStore builds the routing state store of [store]: the Redis store
// (tables and admin state shared by every instance) or, for memory, the
// admin state in memory and in state_file.
func (s *Server) setupStore(cfg *config.Config) error {
	sc := cfg.Store
	if sc == nil || sc.Type != "redis" {
		path := ""
		if sc != nil {
			path = sc.StateFile
		}
		fs, err := routing.NewFileState(path)
		if err != nil {
			return err
		}
		s.adminState = fs
		return nil
	}
	opts := rstore.Options{
		Addrs: sc.Addrs(), MasterName: sc.SentinelMaster, Prefix: sc.Prefix, Instance: sc.Instance,
		LeaseTTL: sc.LeaseTTL.Duration, Refuse: sc.OnStoreLoss == "refuse", Logger: s.log,
		Observer: s.metrics.store,
		OnFence:  s.fence,
		OnState:  s.reloadState,
		OnKick:   s.remoteKick,
		OnConflict: func(pool, user string) {
			if p := s.Pool(pool); p != nil {
				p.KickUser(user, nil)
			}
		},
	}
	if opts.Instance == "" {
		opts.Instance = s.hostname
	}
	if sc.TLS {
		opts.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if sc.PasswordFile != "" {
		b, err := os.ReadFile(sc.PasswordFile)
		if err != nil {
			return fmt.Errorf("store: read password: %w", err)
		}
		opts.Password = strings.TrimSpace(string(b))
	}
	st, err := rstore.New(opts)
	if err != nil {
		return err
	}
	s.rstore, s.adminState = st, st
	return nil
}

// table returns the routing table of a pool: the store's, or nil for the
// in-memory default.
func (s *Server) table(pc config.PoolConfig) routing.Table {
	if s.rstore == nil {
		return nil
	}
	return s.rstore.Table(pc.Name, pc.Linger.Duration)
}

// startStore loads the admin state and, with Redis, runs the store's
// registration and events until ctx ends.
func (s *Server) startStore(ctx context.Context) {
	if s.rstore != nil {
		s.bgDone.Add(1)
		go func() {
			defer s.bgDone.Done()
			s.rstore.Run(ctx)
		}()
		return
	}
	s.reloadState()
}

// closeStore ends this instance's registration, so its counts stop
// holding users at once.
func (s *Server) closeStore() {
	if s.rstore != nil {
		s.rstore.Close()
	}
}

// reloadState applies the stored admin state to every pool.
func (s *Server) reloadState() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.adminState.Load(ctx)
	if err != nil {
		s.log.Warn("routing admin state not loaded", "err", err)
		return
	}
	for _, p := range s.state().pools {
		p.ApplyState(st.Pools[p.Name])
	}
}

// fence ends every session whose user the store counts (IMAP, POP3): the
// store could not be reached for most of lease_ttl, and will soon forget
// them.
func (s *Server) fence() {
	n := 0
	for _, p := range s.state().pools {
		for _, b := range p.Backends() {
			n += p.KickUsers(b)
		}
	}
	s.log.Warn("fenced: user sessions closed", "sessions", n)
}

func (s *Server) remoteKick(k rstore.Kick) {
	p := s.Pool(k.Pool)
	if p == nil {
		return
	}
	if k.User != "" {
		p.KickUser(k.User, p.Backend(k.Keep))
		return
	}
	if b := p.Backend(k.Backend); b != nil {
		p.Kick(b)
	}
}

func (s *Server) findBackend(pool, backend string) (*routing.Pool, *routing.Backend, error) {
	p := s.Pool(pool)
	if p == nil {
		return nil, nil, fmt.Errorf("%w: no pool %q", routing.ErrNotFound, pool)
	}
	b := p.Backend(backend)
	if b == nil {
		return nil, nil, fmt.Errorf("%w: no backend %q in pool %q", routing.ErrNotFound, backend, pool)
	}
	return p, b, nil
}

// change stores one admin change and applies the stored state here; the
// store tells the other instances.
func (s *Server) change(ctx context.Context, c routing.Change) error {
	if err := s.adminState.Apply(ctx, c); err != nil {
		return err
	}
	s.reloadState()
	return nil
}

// SetDraining drains (on) or undrains a backend on every instance sharing
// the store, and across restarts.
func (s *Server) SetDraining(ctx context.Context, pool, backend string, on bool) error {
	if _, _, err := s.findBackend(pool, backend); err != nil {
		return err
	}
	v := ""
	if on {
		v = "1"
	}
	return s.change(ctx, routing.Change{Pool: pool, Kind: "drain", Name: backend, Value: v})
}

// SetWeight sets a backend's weight (>= 0) on every instance and across
// restarts.
func (s *Server) SetWeight(ctx context.Context, pool, backend string, w int) error {
	if _, _, err := s.findBackend(pool, backend); err != nil {
		return err
	}
	if w < 0 {
		return fmt.Errorf("weight %d is negative", w)
	}
	return s.change(ctx, routing.Change{Pool: pool, Kind: "weight", Name: backend, Value: strconv.Itoa(w)})
}

// SetPin pins user (a login; its routing key is stored) to backend, or
// unpins with backend "".
func (s *Server) SetPin(ctx context.Context, pool, user, backend string) error {
	if backend != "" {
		if _, _, err := s.findBackend(pool, backend); err != nil {
			return err
		}
	} else if s.Pool(pool) == nil {
		return fmt.Errorf("%w: no pool %q", routing.ErrNotFound, pool)
	}
	return s.change(ctx, routing.Change{Pool: pool, Kind: "pin", Name: s.Config().Auth.RoutingKey(user), Value: backend})
}

// Kick closes every session on a backend, on every instance; it returns
// how many it closed here.
func (s *Server) Kick(ctx context.Context, pool, backend string) (int, error) {
	p, b, err := s.findBackend(pool, backend)
	if err != nil {
		return 0, err
	}
	n := p.Kick(b)
	if s.rstore != nil {
		if err := s.rstore.BroadcastKick(ctx, rstore.Kick{Pool: pool, Backend: backend}); err != nil {
			return n, fmt.Errorf("tell the other instances: %w", err)
		}
	}
	return n, nil
}

// Move re-points user to backend: the user's sessions elsewhere are
// closed on every instance, and the user's next session goes to backend.
// It returns how many sessions it closed here.
func (s *Server) Move(ctx context.Context, pool, user, backend string) (int, error) {
	p, b, err := s.findBackend(pool, backend)
	if err != nil {
		return 0, err
	}
	key := s.Config().Auth.RoutingKey(user)
	n, err := p.Move(ctx, key, b)
	if err != nil || s.rstore == nil {
		return n, err
	}
	if err := s.rstore.BroadcastKick(ctx, rstore.Kick{Pool: pool, User: key, Keep: backend}); err != nil {
		return n, fmt.Errorf("tell the other instances: %w", err)
	}
	return n, nil
}

// storeMetrics are the [store] metrics; the Redis store reports to them.
type storeMetrics struct {
	seconds  *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	fallback *prometheus.CounterVec
	up       prometheus.Gauge
}

func newStoreMetrics(reg *prometheus.Registry) *storeMetrics {
	m := &storeMetrics{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailproxy_store_seconds",
			Help:    "Latency of routing store calls, by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1},
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailproxy_store_errors_total",
			Help: "Routing store calls that failed, by operation.",
		}, []string{"op"}),
		fallback: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailproxy_store_fallback_total",
			Help: "Routing decisions made without the store while it was down: cached (a cached binding), hash (none cached), refused (on_store_loss = refuse).",
		}, []string{"kind"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailproxy_store_up",
			Help: "1 while the routing store answers (always 1 for type memory).",
		}),
	}
	m.up.Set(1)
	reg.MustRegister(m.seconds, m.errors, m.fallback, m.up)
	return m
}

// Call implements rstore.Observer.
func (m *storeMetrics) Call(op string, d time.Duration, err error) {
	m.seconds.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.errors.WithLabelValues(op).Inc()
	}
}

// Fallback implements rstore.Observer.
func (m *storeMetrics) Fallback(kind string) { m.fallback.WithLabelValues(kind).Inc() }

// Up implements rstore.Observer.
func (m *storeMetrics) Up(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.up.Set(v)
}
