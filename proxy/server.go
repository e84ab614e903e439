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

	"github.com/prometheus/client_golang/prometheus"

	"mailproxy/protocols"
	"mailproxy/proxy/auth"
	"mailproxy/routing"
	rstore "mailproxy/routing/redis"
	mtls "mailproxy/tls"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("mailproxy: server closed")

// Options are the parts of a Server that are not in the config file.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// Handlers maps a protocol name ("imap", "pop3", "smtp", "lmtp",
	// "managesieve") to its implementation. A listener whose protocol has
	// no handler is an error.
	Handlers map[string]protocols.Handler
	// Dial connects to backends; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Certs overrides [tls] cert/key (tests hand in a generated certificate).
	Certs *mtls.CertStore
	// Listen opens the client listeners in ListenAndServe and
	// OpenListeners; default net.Listen.
	Listen func(network, addr string) (net.Listener, error)
	// LoginWait waits before failed-login replies and refusals (the
	// auth penalty, auth_http's Auth-Wait); default a timer. Tests inject
	// one to see the delays without waiting them.
	LoginWait func(ctx context.Context, d time.Duration)
}

// Server runs the listeners of one config.
type Server struct {
	cfg      *config.Config
	log      *slog.Logger
	handlers map[string]protocols.Handler
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	listen   func(network, addr string) (net.Listener, error)
	certs    *mtls.CertStore
	tlsCfg   *tls.Config
	pools    map[string]*routing.Pool
	metrics  *metrics

	conns atomic.Int64
	mu    sync.Mutex
	perIP map[string]int
	lns   map[*net.Listener]string // -> listener name
	live  map[*session]struct{}
	wg    sync.WaitGroup

	closed    atomic.Bool
	bgStop    context.CancelFunc
	bgDone    sync.WaitGroup
	opened    *listenerSet  // by OpenListeners (standby.go); guarded by mu
	held      []*heldSocket // bound, not listening, while standby (standby.go); guarded by mu
	hold      bool          // HoldListeners was called: hold again after CloseListeners
	ownListen bool          // Options.Listen was given: it alone opens listeners

	auth  *auth.Authenticator // auth.mode = "verify"; nil in passthrough (auth.go)
	mechs mechTable           // passthrough SASL mechanisms the backends announced (mechs.go)

	// The login checks of logincheck.go.
	penalty     *auth.Penalty // [auth.penalty]; nil when disabled
	authHTTP    *auth.HTTP    // auth.mode = "http"
	authLookups *prometheus.CounterVec
	loginWait   func(context.Context, time.Duration)

	hostname string // the machine's name, for listeners without hostname

	// The logs of connections refused at accept, one per reason.
	refusedLimit, refusedUntrusted rateLog

	state  routing.StateStore // runtime drains, weights, pins (store.go)
	rstore *rstore.Store      // [store] type = "redis"; nil for memory

	// The poller of parked relays (park.go), started by the first relay
	// that may park; guarded by mu.
	poller       *poller
	pollerFailed bool
}

// backendInfo is what the proxy keeps per backend as routing.Backend.Data.
type backendInfo struct {
	cfg  config.BackendConfig
	addr [routing.NumProtocols]string // by routing.Protocol
	tls  []*tls.Config                // by routing.Protocol; client config for tls != none
}

// New builds a server from a validated config. It does not listen yet.
func New(cfg *config.Config, opts Options) (*Server, error) {
	s := &Server{
		cfg: cfg, log: opts.Logger, handlers: opts.Handlers, dial: opts.Dial, listen: opts.Listen, certs: opts.Certs, loginWait: opts.LoginWait,
		pools: make(map[string]*routing.Pool), perIP: make(map[string]int),
		lns: make(map[*net.Listener]string), live: make(map[*session]struct{}),
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
		s.listen = net.Listen
	}
	s.metrics = newMetrics(s)
	if err := s.setupTLS(); err != nil {
		return nil, err
	}
	if err := s.setupAuth(); err != nil {
		return nil, err
	}
	if err := s.setupStore(); err != nil {
		return nil, err
	}
	for _, l := range cfg.Listeners {
		if s.handlers[l.Protocol] == nil {
			return nil, fmt.Errorf("listener %s: no handler for protocol %q", l.Name, l.Protocol)
		}
	}
	for _, pc := range cfg.Pools {
		p, err := s.newPool(pc)
		if err != nil {
			return nil, err
		}
		s.pools[pc.Name] = p
	}
	return s, nil
}

func (s *Server) setupTLS() error {
	needs := false
	for _, l := range s.cfg.Listeners {
		needs = needs || l.TLS != "none" && l.TLS != ""
	}
	if !needs {
		return nil
	}
	if s.certs == nil {
		c, err := mtls.NewCertStore(s.cfg.TLS.Cert, s.cfg.TLS.Key)
		if err != nil {
			return err
		}
		s.certs = c
	}
	minV, err := mtls.ParseMinVersion(s.cfg.TLS.MinVersion)
	if err != nil {
		return err
	}
	s.tlsCfg = mtls.ServerConfig(s.certs, minV)
	return nil
}

// ReloadCertificates re-reads the server certificate (on SIGHUP).
func (s *Server) ReloadCertificates() error {
	if s.certs == nil {
		return nil
	}
	return s.certs.Reload()
}

func (s *Server) newPool(pc config.PoolConfig) (*routing.Pool, error) {
	var opts routing.Options
	opts.Name = pc.Name
	opts.Linger = pc.Linger.Duration
	opts.Rise, opts.Fall = pc.Health.Rise, pc.Health.Fall
	opts.Table = s.table(pc)
	opts.Pins = make(map[string]string, len(pc.Pins))
	for u, b := range pc.Pins {
		opts.Pins[s.cfg.Auth.RoutingKey(u)] = b
	}
	// LMTP and ManageSieve touch the mail store as IMAP does: IMAP's policy.
	for i, name := range []string{pc.IMAP, pc.POP3, pc.SMTP, pc.IMAP, pc.IMAP} {
		pol, err := routing.ParsePolicy(name)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", pc.Name, err)
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
				return nil, fmt.Errorf("pool %s backend %s: %w", pc.Name, bc.Name, err)
			}
			info.tls[i] = c
		}
		specs = append(specs, spec)
	}
	return routing.NewPool(opts, specs)
}

// Pool returns the routing pool called name, or nil.
func (s *Server) Pool(name string) *routing.Pool { return s.pools[name] }

// Pools returns the routing pools in config order. The admin API drains,
// kicks and reports through them.
func (s *Server) Pools() []*routing.Pool {
	out := make([]*routing.Pool, 0, len(s.cfg.Pools))
	for _, pc := range s.cfg.Pools {
		out = append(out, s.pools[pc.Name])
	}
	return out
}

// Config returns the config the server runs; it must not be modified.
func (s *Server) Config() *config.Config { return s.cfg }

// Listeners reports every configured listener, in config order.
func (s *Server) Listeners() []admin.ListenerStatus {
	bound := map[string]string{}
	s.mu.Lock()
	for ln, name := range s.lns {
		bound[name] = (*ln).Addr().String()
	}
	s.mu.Unlock()
	out := make([]admin.ListenerStatus, 0, len(s.cfg.Listeners))
	for _, l := range s.cfg.Listeners {
		ls := admin.ListenerStatus{Name: l.Name, Protocol: l.Protocol, Address: l.Address, TLS: l.TLS, Pool: l.Pool}
		if a, ok := bound[l.Name]; ok {
			ls.Address, ls.Serving = a, true
		}
		out = append(out, ls)
	}
	return out
}

// ListenAndServe opens every configured listener and serves them until
// Shutdown or Close. It returns ErrServerClosed after a shutdown, or the
// first listen error (having closed what it opened).
func (s *Server) ListenAndServe() error {
	lns, err := s.listenAll()
	if err != nil {
		return err
	}
	errc := make(chan error, len(lns))
	for i, ln := range lns {
		go func() { errc <- s.Serve(s.cfg.Listeners[i].Name, ln) }()
	}
	var first error
	for range lns {
		if err := <-errc; first == nil || errors.Is(first, ErrServerClosed) {
			first = err
		}
	}
	return first
}

// Serve accepts connections on ln for the listener called name until
// Shutdown or Close; it always returns a non-nil error, ErrServerClosed
// after a shutdown. Tests hand in their own listeners here.
func (s *Server) Serve(name string, ln net.Listener) error {
	var lc *config.ListenerConfig
	for i := range s.cfg.Listeners {
		if s.cfg.Listeners[i].Name == name {
			lc = &s.cfg.Listeners[i]
		}
	}
	if lc == nil {
		ln.Close()
		return fmt.Errorf("no listener called %q", name)
	}
	if !s.track(&ln, name) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrack(&ln)
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
		s.accept(lc, c)
	}
}

// track registers a serving listener; false after Shutdown or Close.
func (s *Server) track(ln *net.Listener, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return false
	}
	s.lns[ln] = name
	return true
}

func (s *Server) untrack(ln *net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.lns, ln)
}

// accept applies the connection limits and starts the session goroutine.
// On a proxy_protocol listener only trusted balancers get in, and the
// per-IP limit waits for the header to name the client (admitProxied).
func (s *Server) accept(lc *config.ListenerConfig, c net.Conn) {
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
	over := s.conns.Load() >= int64(s.cfg.Limits.MaxConnections) ||
		ip != "" && s.perIP[ip] >= s.cfg.Limits.MaxConnectionsPerIP
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
			say(c, notices[lc.Protocol].busy)
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
			if c, ip = s.admitProxied(lc, c); c == nil {
				release()
				return
			}
		}
		s.serveSession(lc, c, release)
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
		(*ln).Close()
	}
	s.releaseHeld()
}

// StartBackground starts the server's background work (health checks)
// until Shutdown or Close.
func (s *Server) StartBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	s.bgStop = cancel
	s.startHealth(ctx)
	s.startStore(ctx)
}

// parkPoller returns the server's poller of parked relays, starting it
// on first use, or nil when sessions are not parked.
func (s *Server) parkPoller() *poller {
	if s.cfg.Limits.ParkAfter.Duration <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.poller == nil && !s.pollerFailed && !s.closed.Load() {
		p, err := newPoller(s.cfg.Limits.IdleTimeout.Duration)
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
	s.mu.Lock()
	p := s.poller
	s.mu.Unlock()
	if p != nil {
		p.close()
	}
	if s.bgStop != nil {
		s.bgStop()
		s.bgDone.Wait()
	}
	s.closeStore()
}
