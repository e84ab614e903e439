// Package proxy is mailproxy's server: listeners and accept loops,
// connection limits, the life of a session (id, deadlines, logs, the lease),
// the byte relay after login, health checks and graceful shutdown. It never
// parses a mail protocol: that is the protocols packages' job, handed in as
// protocols.Handler values.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"mailproxy/proxy/admin"
	"mailproxy/proxy/config"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/protocols"
	"mailproxy/routing"
	rstore "mailproxy/routing/redis"
	mtls "mailproxy/tls"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("mailproxy: server closed")

// Options are the parts of a Server that are not in the config file.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// Level, when set, is the level Logger's handler uses: New and Reload
	// set it to [log] level. Nil: [log] level is the caller's business.
	Level *slog.LevelVar
	// Handlers maps a protocol name ("imap", "pop3", "smtp", "lmtp",
	// "managesieve") to its implementation. A listener whose protocol has
	// no handler is an error.
	Handlers map[string]protocols.Handler
	// Dial connects to backends; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Certs overrides [tls] cert/key (tests hand in a generated
	// certificate); a reload then keeps it.
	Certs *mtls.CertStore
	// Listen opens the client listeners in ListenAndServe, OpenListeners
	// and Reload; default net.Listen, with keep-alive set on the listening
	// socket (listen_linux.go).
	Listen func(network, addr string) (net.Listener, error)
	// LoginWait waits before failed-login replies and refusals (the
	// auth penalty, auth_http's Auth-Wait); default a timer. Tests inject
	// one to see the delays without waiting them.
	LoginWait func(ctx context.Context, d time.Duration)
}

// Server runs the listeners of one config, and of the next one on Reload.
type Server struct {
	st       atomic.Pointer[state] // the config in force and what it made (reload.go)
	log      *slog.Logger
	level    *slog.LevelVar
	handlers map[string]protocols.Handler
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	listen   func(network, addr string) (net.Listener, error)
	certs    *mtls.CertStore // Options.Certs; nil: [tls] files, read per state
	metrics  *metrics
	reloadMu sync.Mutex // one Reload at a time

	conns atomic.Int64
	mu    sync.Mutex
	perIP map[string]int
	lns   map[net.Listener]lnEntry // the serving listeners
	live  map[*session]struct{}
	wg    sync.WaitGroup

	closed    atomic.Bool
	bgCtx     context.Context // set by StartBackground; health loops of each state run under it
	bgStop    context.CancelFunc
	opened    *listenerSet           // by OpenListeners (standby.go); guarded by mu
	held      map[string]*heldSocket // by address: bound, not listening, while standby (standby.go); guarded by mu
	hold      bool                   // HoldListeners was called: hold again after CloseListeners
	ownListen bool                   // Options.Listen was given: it alone opens listeners

	mechs mechTable // passthrough SASL mechanisms the backends announced (mechs.go)

	// The login checks of logincheck.go; the penalty and auth_http lookup
	// themselves are in the state.
	loginMetrics loginMetrics
	loginWait    func(context.Context, time.Duration)

	hostname string // the machine's name, for listeners without hostname

	// The logs of connections refused at accept, one per reason.
	refusedLimit, refusedUntrusted rateLog

	adminState routing.StateStore // runtime drains, weights, pins (store.go)
	rstore     *rstore.Store      // [store] type = "redis"; nil for memory; [store] is read at New only
	bgDone     sync.WaitGroup     // the store's background work

	// The poller of parked relays (park.go), started by the first relay
	// that may park; guarded by mu.
	poller       *poller
	pollerFailed bool
}

// lnEntry is what the server knows of a serving listener: the name it
// serves and the configured address it was opened for.
type lnEntry struct{ name, addr string }

// backendInfo is what the proxy keeps per backend as routing.Backend.Data.
type backendInfo struct {
	cfg  config.BackendConfig
	addr [routing.NumProtocols]string // by routing.Protocol
	tls  []*tls.Config                // by routing.Protocol; client config for tls != none
}

// New builds a server from a validated config. It does not listen yet.
func New(cfg *config.Config, opts Options) (*Server, error) {
	s := &Server{
		log: opts.Logger, level: opts.Level, handlers: opts.Handlers, dial: opts.Dial, listen: opts.Listen, certs: opts.Certs, loginWait: opts.LoginWait,
		perIP: make(map[string]int), lns: make(map[net.Listener]lnEntry), live: make(map[*session]struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.hostname, _ = os.Hostname() // once: greetings must not cost a syscall each
	if s.dial == nil {
		var d net.Dialer
		s.dial = d.DialContext
	}
	s.ownListen = s.listen != nil
	if s.listen == nil {
		s.listen = listenTCP
	}
	s.metrics = newMetrics(s)
	s.setupLoginMetrics()
	if err := s.setupStore(cfg); err != nil {
		return nil, err
	}
	st, err := s.build(cfg, nil)
	if err != nil {
		return nil, err
	}
	st.apply()
	s.st.Store(st)
	s.setLevel(cfg)
	return s, nil
}

// state returns the config in force and what it made.
func (s *Server) state() *state { return s.st.Load() }

// poolSpecs turns a [[pool]] into routing's options and backend specs.
func (s *Server) poolSpecs(cfg *config.Config, pc config.PoolConfig) (routing.Options, []routing.BackendSpec, error) {
	var opts routing.Options
	opts.Name = pc.Name
	opts.Linger = pc.Linger.Duration
	opts.Rise, opts.Fall = pc.Health.Rise, pc.Health.Fall
	opts.Table = s.table(pc)
	opts.Pins = make(map[string]string, len(pc.Pins))
	for u, b := range pc.Pins {
		opts.Pins[cfg.Auth.RoutingKey(u)] = b
	}
	// LMTP and ManageSieve touch the mail store as IMAP does: IMAP's policy.
	for i, name := range []string{pc.IMAP, pc.POP3, pc.SMTP, pc.IMAP, pc.IMAP} {
		pol, err := routing.ParsePolicy(name)
		if err != nil {
			return opts, nil, fmt.Errorf("pool %s: %w", pc.Name, err)
		}
		opts.Policies[i] = pol
	}
	opts.OnStateChange = func(b *routing.Backend, p routing.Protocol, st routing.State, reason string) {
		attrs := []any{"pool", pc.Name, "backend", b.Name, "protocol", p.String(), "reason", reason}
		if st == routing.Down {
			s.log.Warn("backend down", attrs...)
			return
		}
		// Up for this protocol; st says whether it also takes new users (draining).
		s.log.Info("backend up", append(attrs, "state", st.String())...)
	}
	var specs []routing.BackendSpec
	for _, bc := range pc.Backends {
		info := &backendInfo{cfg: bc, addr: [routing.NumProtocols]string{bc.IMAP, bc.POP3, bc.SMTP, bc.LMTP, bc.ManageSieve}, tls: make([]*tls.Config, routing.NumProtocols)}
		spec := routing.BackendSpec{Name: bc.Name, Weight: bc.Weight, Disabled: bc.Disabled, Data: info}
		for i, a := range info.addr {
			spec.Serves[i] = a != ""
			if a == "" || bc.TLS == "none" || bc.TLS == "" {
				continue
			}
			c, err := mtls.ClientConfig(a, mtls.ClientOptions{ServerName: bc.TLSServerName, SkipVerify: bc.TLSSkipVerify, CAFile: bc.TLSCA})
			if err != nil {
				return opts, nil, fmt.Errorf("pool %s backend %s: %w", pc.Name, bc.Name, err)
			}
			info.tls[i] = c
		}
		specs = append(specs, spec)
	}
	return opts, specs, nil
}

// Pool returns the routing pool called name, or nil.
func (s *Server) Pool(name string) *routing.Pool { return s.state().pools[name] }

// Pools returns the routing pools in config order. The admin API drains,
// kicks and reports through them.
func (s *Server) Pools() []*routing.Pool {
	st := s.state()
	out := make([]*routing.Pool, 0, len(st.cfg.Pools))
	for _, pc := range st.cfg.Pools {
		out = append(out, st.pools[pc.Name])
	}
	return out
}

// Config returns the config in force; it must not be modified.
func (s *Server) Config() *config.Config { return s.state().cfg }

// Listeners reports every configured listener, in config order.
func (s *Server) Listeners() []admin.ListenerStatus {
	bound := map[string]string{}
	s.mu.Lock()
	for ln, e := range s.lns {
		bound[e.name] = ln.Addr().String()
	}
	s.mu.Unlock()
	cfg := s.Config()
	out := make([]admin.ListenerStatus, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ls := admin.ListenerStatus{Name: l.Name, Protocol: l.Protocol, Address: l.Address, TLS: l.TLS, Pool: l.Pool}
		if a, ok := bound[l.Name]; ok {
			ls.Address, ls.Serving = a, true
		}
		out = append(out, ls)
	}
	return out
}

// ListenAndServe opens every configured listener and serves them until
// Shutdown or Close, opening and closing listeners as reloads say. It
// returns ErrServerClosed after a shutdown, or the first listen error
// (having closed what it opened).
func (s *Server) ListenAndServe() error {
	if err := s.OpenListeners(); err != nil {
		return err
	}
	s.mu.Lock()
	set := s.opened
	s.mu.Unlock()
	if set != nil {
		<-set.closed
		set.serving.Wait()
	}
	return ErrServerClosed
}

// Serve accepts connections on ln for the listener called name until
// Shutdown or Close, or until a reload removes the listener or moves it to
// another address; it always returns a non-nil error, ErrServerClosed
// after a shutdown or such a reload. Each connection is served as the
// listener's config in force at its accept says. Tests hand in their own
// listeners here.
func (s *Server) Serve(name string, ln net.Listener) error {
	lc := s.state().listener(name)
	if lc == nil {
		ln.Close()
		return fmt.Errorf("no listener called %q", name)
	}
	if !s.track(ln, lnEntry{name, lc.Address}) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrack(ln)
	s.log.Info("listening", "listener", name, "protocol", lc.Protocol, "address", ln.Addr().String(), "tls", lc.TLS)
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return ErrServerClosed
			}
			s.log.Error("accept failed", "listener", name, "err", err, "retry_in", backoff)
			time.Sleep(backoff) // back off from EMFILE and friends
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		st := s.state()
		if lc = st.listener(name); lc == nil { // removed by a reload that is closing ln
			c.Close()
			continue
		}
		s.accept(st, lc, c)
	}
}

// track registers a serving listener; false after Shutdown or Close.
func (s *Server) track(ln net.Listener, e lnEntry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return false
	}
	if _, ok := s.lns[ln]; !ok { // OpenListeners tracked it first, with the address it opened
		s.lns[ln] = e
	}
	return true
}

func (s *Server) untrack(ln net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.lns, ln)
}

// accept applies the connection limits and starts the session goroutine.
// On a proxy_protocol listener only trusted balancers get in, and the
// per-IP limit waits for the header to name the client (admitProxied).
func (s *Server) accept(st *state, lc *config.ListenerConfig, c net.Conn) {
	ip := remoteIP(c)
	if lc.ProxyProtocol {
		if !fromBalancer(lc, c) {
			s.refusedUntrusted.warn(s.log, "connection refused: not a trusted PROXY protocol sender", "listener", lc.Name, "client", c.RemoteAddr().String())
			s.metrics.refused(lc)
			c.Close()
			return
		}
		ip = ""
	}
	s.mu.Lock()
	over := s.conns.Load() >= int64(st.cfg.Limits.MaxConnections) ||
		ip != "" && s.perIP[ip] >= st.cfg.Limits.MaxConnectionsPerIP
	if !over {
		s.conns.Add(1)
		if ip != "" {
			s.perIP[ip]++
		}
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if over {
		s.refusedLimit.warn(s.log, "connection refused: limit reached", "listener", lc.Name, "client", c.RemoteAddr().String())
		s.metrics.refused(lc)
		if lc.TLS != "implicit" {
			say(c, s.handlers[lc.Protocol].Notice(protocols.NoticeBusy))
		}
		c.Close()
		return
	}
	// release runs when the session ends, which may be long after this
	// goroutine: a parked session has none.
	release := func() {
		s.mu.Lock()
		s.conns.Add(-1)
		if ip != "" { // "": a balancer's connection whose header named no client
			if s.perIP[ip]--; s.perIP[ip] <= 0 {
				delete(s.perIP, ip)
			}
		}
		s.mu.Unlock()
		s.wg.Done()
	}
	go func() {
		if lc.ProxyProtocol {
			if c, ip = s.admitProxied(st, lc, c); c == nil {
				release()
				return
			}
		}
		s.serveSession(st, lc, c, release)
	}()
}

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	return host
}

// Shutdown stops accepting, lets live sessions end on their own until ctx
// is done, then closes the rest. It returns ctx's error if sessions had to
// be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.stopBackground()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes every listener and every live session at once, each after
// a goodbye to its client (IMAP "* BYE", POP3 "-ERR", SMTP "421"), which
// takes at most a second.
func (s *Server) Close() error {
	s.closeListeners()
	s.mu.Lock()
	live := make([]*session, 0, len(s.live))
	for ss := range s.live {
		live = append(live, ss)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, ss := range live {
		wg.Go(func() {
			ss.goodbye()
			ss.cancel()
		})
	}
	wg.Wait()
	s.stopBackground()
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	if s.opened != nil {
		close(s.opened.closed)
		s.opened = nil
	}
	s.releaseHeld()
}

// StartBackground starts the server's background work (health checks)
// until Shutdown or Close; a reload restarts it for the new config.
func (s *Server) StartBackground() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.bgCtx, s.bgStop = ctx, cancel
	s.mu.Unlock()
	s.state().startHealth(s, ctx)
	s.startStore(ctx)
}

// parkPoller returns the server's poller of parked relays, starting it
// on first use, or nil when sessions are not parked.
func (s *Server) parkPoller() *poller {
	cfg := s.Config()
	if cfg.Limits.ParkAfter.Duration <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.poller == nil && !s.pollerFailed && !s.closed.Load() {
		p, err := newPoller(cfg.Limits.IdleTimeout.Duration) // the config at first use: a reload does not change it
		if err != nil {
			s.pollerFailed = true
			s.log.Warn("idle sessions will not be parked", "err", err)
			return nil
		}
		s.poller = p
	}
	return s.poller
}

// ParkedDirections counts the relay directions parked now: two per
// session that is quiet both ways.
func (s *Server) ParkedDirections() int {
	s.mu.Lock()
	p := s.poller
	s.mu.Unlock()
	if p == nil {
		return 0
	}
	return p.count()
}

func (s *Server) stopBackground() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	p := s.poller
	stop := s.bgStop
	s.mu.Unlock()
	if p != nil {
		p.close()
	}
	if stop != nil {
		stop()
		s.state().stopHealth()
		s.bgDone.Wait()
	}
	s.closeStore()
}
