package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"mailproxy/protocols"
	"mailproxy/proxy/proxyproto"
	"mailproxy/routing"
	mtls "mailproxy/tls"
)

// session is one client connection, owned by its goroutine.
type session struct {
	srv    *Server
	st     *state // the config in force at accept, for the whole session
	lc     *config.ListenerConfig
	pool   *routing.Pool
	proto  routing.Protocol
	log    *slog.Logger // nil while relaying: rebuilt for the end line (logger)
	addr   string       // the client's address, for the log
	ctx    context.Context
	cancel context.CancelFunc
	stop   func() bool // unregisters the close-on-cancel of the accepted conn
	id     string
	start  time.Time
	lookup *httpLogin // auth_http's state (logincheck.go); nil until a lookup

	client   net.Conn           // the accepted conn, then TLS, then what the protocol hands back
	ps       *protocols.Session // what the protocol sees; dropped after login
	user     string             // the login name, for the end line
	keyOf    string             // the login whose routing key is key
	key      string
	backend  *protocols.Backend // the backend of the current login attempt
	loggedIn bool
	relaying bool // the relay owns the session's end (relayEnded)
	// byeTo is where a goodbye may be written from another goroutine
	// (shutdown): the connection in the state the client reads it, or nil
	// while that is not known (before login on a STARTTLS listener).
	byeTo   atomic.Pointer[net.Conn]
	res     relayResult
	outcome string // for the end line
	release func() // gives back what accept counted for the connection
}

// say sends one of the proxy's own replies, bounded by a short deadline.
// Nothing is said in plain text on an implicit-TLS connection before its
// handshake.
func say(c net.Conn, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, msg)
}

func newID() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// serveSession runs one connection from accept to login, then starts the
// relay, which ends the session (relayEnded) on whichever goroutine its
// last direction ends: an idle session may have parked, and then no
// goroutine of it is left. Its own frame is kept small: it sits under the
// relay while the client to backend direction is busy, so the login work
// lives in helpers whose frames are gone by then.
func (s *Server) serveSession(st *state, lc *config.ListenerConfig, c net.Conn, release func()) {
	ss := s.newSession(st, lc, c, release)
	defer ss.endLogin()
	r := ss.login()
	if r == nil {
		return
	}
	// The relay ties the connections to ctx itself, and closing the
	// accepted one behind its back would leave a parked direction unwoken.
	ss.stop()
	ss.stop = stopped // the registration stays reachable through its stop func
	ss.relaying = true
	// The logger's preformatted fields are a few hundred bytes that an
	// idle session need not keep: the end line makes them again. So is
	// what only the login phase used.
	ss.log, ss.lookup, ss.keyOf, ss.key = nil, nil, "", ""
	ss.ctx.(*sessionCtx).forgetDone()
	relay(ss.ctx, r, relayOpts{idle: st.cfg.Limits.IdleTimeout.Duration, park: st.cfg.Limits.ParkAfter.Duration,
		poller: s.parkPoller(), onEnd: ss.relayEnded})
}

// stopped is the stop func of something already stopped.
func stopped() bool { return false }

// endLogin ends a session that did not reach the relay. It is deferred
// directly, so its recover catches a panic anywhere before the relay
// (the relay's goroutines recover their own).
func (ss *session) endLogin() {
	if r := recover(); r != nil {
		ss.logger().Error("session panic", "panic", r, "stack", string(debug.Stack()))
		say(ss.client, ss.srv.handlers[ss.lc.Protocol].Notice(protocols.NoticePanic))
		ss.outcome = "panic"
		if ss.relaying {
			ss.cancel() // the relay ends the session
			return
		}
	}
	if !ss.relaying {
		ss.finish()
	}
}

// relayEnded ends a session after its relay.
func (ss *session) relayEnded(res relayResult) {
	ss.res = res
	ss.outcome = ss.relayOutcome()
	var p *relayPanic
	if errors.As(res.err, &p) {
		ss.logger().Error("session panic", "panic", p.value, "stack", string(p.stack))
		ss.outcome = "panic"
	}
	ss.finish()
}

// newSession registers a session for c and logs its start.
func (s *Server) newSession(st *state, lc *config.ListenerConfig, c net.Conn, release func()) *session {
	proto, _ := routing.ParseProtocol(lc.Protocol)
	ctx, cancel := newSessionCtx()
	ss := &session{srv: s, st: st, lc: lc, pool: st.pools[lc.Pool], proto: proto, ctx: ctx, cancel: cancel,
		id: newID(), start: time.Now(), client: c, ps: &protocols.Session{}, outcome: "closed", release: release}
	ss.addr = c.RemoteAddr().String()
	ss.log = ss.logger()
	// A kill (kick, backend down) cancels ctx from another goroutine:
	// close the accepted conn, never ss.client, which this goroutine
	// replaces after TLS and login.
	ss.stop = ctx.AfterFunc(func() { c.Close() })
	if lc.TLS == "none" || lc.TLS == "" {
		ss.byeTo.Store(&c)
	}
	s.mu.Lock()
	s.live[ss] = struct{}{}
	s.mu.Unlock()
	ss.log.Info("session start", viaAttrs(c)...)
	return ss
}

// logger returns the session's logger, making it again if the relay
// dropped it.
func (ss *session) logger() *slog.Logger {
	if ss.log == nil {
		ss.log = ss.srv.log.With("session", ss.id, "listener", ss.lc.Name, "client", ss.addr)
	}
	return ss.log
}

// finish tears the session down and writes its end line.
func (ss *session) finish() {
	s, lc := ss.srv, ss.lc
	defer ss.release()
	ss.stop()
	ss.cancel()
	ss.client.Close()
	if ss.backend != nil {
		ss.backend.Close()
	}
	s.mu.Lock()
	delete(s.live, ss)
	s.mu.Unlock()
	res := ss.res
	attrs := []any{"user", ss.user, "bytes_in", res.up, "bytes_out", res.down,
		"duration", time.Since(ss.start).Round(time.Millisecond).String(), "outcome", ss.outcome}
	backend := ""
	if ss.backend != nil {
		backend = ss.backend.Name
		attrs = append(attrs, "backend", backend)
	}
	s.metrics.sessionEnded(lc, backend, ss.loggedIn, ss.user != "", res, ss.outcome)
	ss.logger().Info("session end", attrs...)
}

// login runs TLS and the protocol's dialogue before login under the login
// deadline. It returns the relay after a successful login, or nil.
func (ss *session) login() *protocols.Relay {
	s, st, lc := ss.srv, ss.st, ss.lc
	ss.client.SetDeadline(ss.start.Add(st.cfg.Limits.LoginTimeout.Duration))
	if lc.TLS == "implicit" {
		tc, err := mtls.Handshake(ss.ctx, ss.client, st.tlsCfg, true)
		if err != nil {
			ss.outcome = "tls handshake failed"
			ss.log.Debug("tls handshake failed", "err", err)
			return nil
		}
		ss.client = tc
		bye := net.Conn(tc)
		ss.byeTo.Store(&bye)
	}
	ss.ps = ss.protoSession(ss.client)
	r, err := s.handlers[lc.Protocol].Serve(ss.ctx, ss.ps)
	ss.user, ss.loggedIn = ss.ps.User, ss.ps.LoggedIn
	ss.res.up, ss.res.down = ss.ps.BytesIn, ss.ps.BytesOut
	if err != nil {
		ss.outcome = classify(err)
		// Not after a STARTTLS answered with OK: the client is speaking
		// TLS by then, and plain text would only garble its handshake.
		if ss.outcome == "login timeout" && !errors.Is(err, mtls.ErrHandshake) {
			say(ss.client, s.handlers[lc.Protocol].Notice(protocols.NoticeTimeout))
		}
		ss.log.Debug("session error", "err", err)
		return nil
	}
	if r != nil {
		r.Client = proxyproto.Unwrap(r.Client) // a bare TCP conn, so the relay can splice
		ss.client, ss.backend, ss.loggedIn = r.Client, r.Backend, true
		client := r.Client // a copy: byeTo is read by another goroutine
		ss.byeTo.Store(&client)
		ss.client.SetDeadline(time.Time{})
		r.Backend.SetDeadline(time.Time{})
		// Nothing of the login phase stays reachable for the relay's
		// lifetime: an idle session should cost as little as possible.
		ss.ps = nil
		r.Backend.Greeting, r.Backend.Caps = "", nil
		r.Backend.Fail = noFail // its closure holds the login attempt's state
	}
	return r
}

// noFail is Backend.Fail once health no longer hears of the backend.
func noFail(string) {}

// goodbye tells the client the server is shutting down, where it is
// known how to reach it (see byeTo). It runs outside the session's
// goroutine, bounded by say's deadline; the session is closed after it.
func (ss *session) goodbye() {
	if c := ss.byeTo.Load(); c != nil {
		say(*c, ss.srv.handlers[ss.lc.Protocol].Notice(protocols.NoticeShutdown))
	}
}

// relayOutcome says why the relay ended, for the end line.
func (ss *session) relayOutcome() string {
	switch {
	case ss.ctx.Err() != nil:
		return "closed by proxy"
	case errors.Is(ss.res.err, errIdle):
		return "idle timeout"
	case errors.Is(ss.res.err, errStalled):
		return "write timeout"
	case ss.res.err != nil:
		return "relay error: " + ss.res.err.Error()
	}
	return "logout"
}

// classify turns a session error into the outcome word of the end line.
func classify(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "login timeout"
	case errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "error: " + err.Error()
}

// protoSession builds what the protocol handler sees.
func (ss *session) protoSession(c net.Conn) *protocols.Session {
	s, st, lc := ss.srv, ss.st, ss.lc
	var tlsCfg *tls.Config
	if lc.TLS != "none" && lc.TLS != "" {
		tlsCfg = st.tlsCfg
	}
	host := lc.Hostname
	if host == "" {
		host = s.hostname
	}
	ps := &protocols.Session{
		ID: ss.id, Conn: c, Log: ss.log, TLS: tlsCfg, TLSActive: lc.TLS == "implicit",
		RequireTLS: lc.RequireTLS, Hostname: host,
		SMTPAuth: lc.SMTPAuth, APOP: lc.APOP, MaxSize: lc.MaxSize,
		MaxLine: 8 << 10, AuthFailureDelay: st.cfg.Limits.AuthFailureDelay.Duration,
		LoginDeadline:  ss.start.Add(st.cfg.Limits.LoginTimeout.Duration),
		BackendTimeout: st.cfg.Limits.BackendTimeout.Duration,
		Dial:           ss.dialBackend,
	}
	if ss.proto == routing.LMTP {
		ps.Route = ss.route
	}
	if st.auth != nil {
		ps.Authenticate = ss.authenticate
	}
	ss.loginChecks(ps)
	return ps
}

// dialBackend picks, connects and greets a backend for login, trying the
// next backend where routing allows when one cannot be reached.
func (ss *session) dialBackend(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
	key := ss.key
	if login != ss.keyOf {
		key = ss.st.cfg.Auth.RoutingKey(login)
	}
	tried := ss.excludeForced() // auth_http's Auth-Server
	for range ss.pool.Backends() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lease, err := ss.pool.Acquire(ctx, ss.proto, key, tried...)
		if err != nil {
			ss.log.Warn("no backend available", "user", login, "tried", len(tried))
			return nil, fmt.Errorf("pick backend: %w", err)
		}
		b, err := ss.connect(ctx, lease, hello)
		if err == nil {
			ss.backend = b
			return b, nil
		}
		if errors.Is(err, protocols.ErrClientFault) {
			// The next backend would refuse the client just the same.
			ss.log.Info("backend refused the client", "backend", lease.Backend.Name, "err", err)
			return nil, err
		}
		ss.log.Warn("backend failed", "backend", lease.Backend.Name, "err", err)
		tried = append(tried, lease.Backend)
	}
	return nil, fmt.Errorf("pick backend: %w", routing.ErrNoBackend)
}

// connect dials the lease's backend and runs hello. On failure the lease is
// released and the backend charged with a failed health check, unless
// hello says the client caused it (protocols.ErrClientFault).
func (ss *session) connect(ctx context.Context, lease *routing.Lease, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
	return ss.connectLease(ctx, lease, hello, false)
}

// connectLease is connect; with held, the lease belongs to a
// protocols.Lease (route.go): a failure does not release it, nor does
// closing the Backend, and a kill closes this connection only.
func (ss *session) connectLease(ctx context.Context, lease *routing.Lease, hello func(context.Context, *protocols.Backend) error, held bool) (*protocols.Backend, error) {
	release := lease.Release
	if held {
		release = func() {}
	}
	rb := lease.Backend
	info := rb.Data().(*backendInfo)
	addr := info.addr[ss.proto]
	// A failure counts against the backend only while the session is
	// alive: a dial or greeting cut short because the client left or the
	// session was killed says nothing about the backend, and counting it
	// would let one backend going down take others down with it.
	var killed atomic.Bool // routing ended this attempt (backend down, kick)
	fail := func(reason string) {
		if ctx.Err() == nil && !killed.Load() {
			ss.pool.Observe(rb, ss.proto, false, reason)
		}
	}
	// One try, dial to backend login, is bounded by backend_timeout: a
	// backend that accepts and never greets costs that much, and then the
	// next backend is tried. The dial alone keeps the shorter health
	// timeout. (Not the client's login deadline: an SMTP session connects
	// a new backend whenever it lost one, long after its start.)
	deadline := time.Now().Add(ss.st.cfg.Limits.BackendTimeout.Duration)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	dialCtx, dialCancel := context.WithTimeout(dctx, ss.st.poolConfig(ss.lc.Pool).Health.Timeout.Duration)
	conn, err := ss.srv.dial(dialCtx, "tcp", addr)
	dialCancel()
	if err != nil {
		release()
		fail("connect: " + err.Error())
		return nil, fmt.Errorf("dial backend %s: %w", rb.Name, err)
	}
	raw := conn
	if err := writeProxyHeader(dctx, conn, info.cfg.SendProxyProtocol, ss.client.RemoteAddr(), ss.client.LocalAddr(), ss.clientTLS()); err != nil {
		conn.Close()
		release()
		fail(err.Error())
		return nil, fmt.Errorf("backend %s: %w", rb.Name, err)
	}
	if info.cfg.TLS == "implicit" {
		tc, err := mtls.Handshake(dctx, conn, info.tls[ss.proto], false)
		if err != nil {
			conn.Close()
			release()
			fail(err.Error())
			return nil, fmt.Errorf("backend %s: %w", rb.Name, err)
		}
		conn = tc
	}
	b := protocols.NewBackend(conn, rb.Name, addr, release)
	b.TLS, b.StartTLS, b.ForwardClient = info.tls[ss.proto], info.cfg.TLS == "starttls", info.cfg.ForwardClient
	b.Fail = fail
	// A kill during hello (greeting and, for IMAP and POP3 logins without
	// a client round trip, the backend login) ends this attempt only:
	// dialBackend then tries the next backend routing gives. After hello,
	// a kill ends the whole session: the user may already be placed
	// elsewhere.
	lease.OnKill(func() { killed.Store(true); raw.Close() })
	// The deadline stays set after hello: it bounds the protocol's backend
	// login too, and login clears it for the relay.
	conn.SetDeadline(deadline)
	if err := hello(dctx, b); err != nil {
		b.Close()
		if !errors.Is(err, protocols.ErrClientFault) {
			fail("greeting: " + err.Error())
		}
		return nil, fmt.Errorf("backend %s: %w", rb.Name, err)
	}
	if held {
		lease.OnKill(func() { raw.Close() })
		return b, nil
	}
	lease.OnKill(func() { ss.cancel(); raw.Close() })
	return b, nil
}

func (st *state) poolConfig(name string) *config.PoolConfig {
	for i := range st.cfg.Pools {
		if st.cfg.Pools[i].Name == name {
			return &st.cfg.Pools[i]
		}
	}
	return nil
}

// authenticate checks a login with [auth] mode = "verify". The routing key
// it computes is kept for dialBackend, which needs the same one.
func (ss *session) authenticate(ctx context.Context, c protocols.Credentials) (protocols.Credentials, error) {
	ss.keyOf, ss.key = c.Username, ss.st.cfg.Auth.RoutingKey(c.Username)
	return ss.st.auth.AuthenticateKey(ctx, ss.key, c)
}
