package proxy

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailproxy/protocols"
	"mailproxy/proxy/auth"
	"mailproxy/proxy/config"
	"mailproxy/routing"
)

// loginMetrics count what the login checks do; registered once, in New,
// whatever the reloads do to the checks themselves.
type loginMetrics struct {
	failures prometheus.Counter
	refusals *prometheus.CounterVec
	lookups  *prometheus.CounterVec
}

func (s *Server) setupLoginMetrics() {
	if s.loginWait == nil {
		s.loginWait = sleepCtx
	}
	m := &s.loginMetrics
	m.failures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailproxy_auth_failures_total",
		Help: "Failed logins counted by the auth penalty.",
	})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailproxy_auth_refusals_total",
		Help: "Logins refused by the auth penalty, by scope (ip-user, ip).",
	}, []string{"scope"})
	m.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailproxy_auth_http_lookups_total",
		Help: "auth_http lookups by result: ok, failed (the service said no), error (unreachable, bad reply), cached.",
	}, []string{"result"})
	s.metrics.reg.MustRegister(m.failures, m.refusals, m.lookups)
}

// buildLoginChecks makes the auth penalty ([auth.penalty]) and the
// auth_http lookup (auth.mode = "http") of cfg into st. A reload that
// leaves their settings as they were keeps old's, so the failures counted
// so far and the lookups cached survive it.
func (s *Server) buildLoginChecks(cfg *config.Config, st, old *state) error {
	a := cfg.Auth
	same := old != nil && old.cfg.Auth.UsernameCase == a.UsernameCase && old.cfg.Auth.DefaultDomain == a.DefaultDomain
	if p := a.Penalty; p.Enabled {
		if same && old.penalty != nil && reflect.DeepEqual(old.cfg.Auth.Penalty, p) && old.cfg.Limits.AuthFailureDelay == cfg.Limits.AuthFailureDelay {
			st.penalty = old.penalty
		} else {
			m := &s.loginMetrics
			st.penalty = auth.NewPenalty(auth.PenaltyOptions{
				Window: p.Window.Duration, BaseDelay: cfg.Limits.AuthFailureDelay.Duration, MaxDelay: p.MaxDelay.Duration,
				IPUserLimit: p.IPUserLimit, IPLimit: p.IPLimit, UserLimit: p.UserLimit,
				Normalize: a.RoutingKey, Log: s.log, Wait: s.loginWait,
				OnFailure: m.failures.Inc, OnRefusal: func(scope string) { m.refusals.WithLabelValues(scope).Inc() },
			})
		}
	}
	if a.Mode == "http" {
		o := old
		if o != nil && o.authHTTP != nil && o.cfg.Auth.HTTPURL == a.HTTPURL && o.cfg.Auth.HTTPTimeout == a.HTTPTimeout && o.cfg.Auth.HTTPCacheTTL == a.HTTPCacheTTL {
			st.authHTTP = o.authHTTP
			return nil
		}
		h, err := auth.NewHTTP(auth.HTTPOptions{URL: a.HTTPURL, Timeout: a.HTTPTimeout.Duration, CacheTTL: a.HTTPCacheTTL.Duration})
		if err != nil {
			return err
		}
		st.authHTTP = h
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// loginChecks gives a session's protocol the penalty of its client
// address, in http mode the auth_http check, and in passthrough mode the
// mechanisms it may pass through.
func (ss *session) loginChecks(ps *protocols.Session) {
	s, st := ss.srv, ss.st
	if st.passthrough() {
		ps.PassMechs = func() []string { return s.mechs.common(ss.pool, ss.proto) }
	}
	if st.penalty != nil || st.authHTTP != nil {
		g := &sessionGuard{ss: ss}
		if st.penalty != nil {
			g.inner = st.penalty.Guard(ss.clientIP())
		}
		ps.Guard = g
	}
	if st.authHTTP != nil {
		ps.Authenticate = ss.authenticateHTTP
	}
}

func (ss *session) clientIP() string {
	host, _, err := net.SplitHostPort(ss.client.RemoteAddr().String())
	if err != nil {
		return ss.client.RemoteAddr().String()
	}
	return host
}

// httpLogin is what auth_http told a session.
type httpLogin struct {
	attempts int              // Auth-Login-Attempt
	wait     time.Duration    // Auth-Wait of the last refusal
	forced   *routing.Backend // the backend Auth-Server named
}

// sessionGuard is the penalty of the client's address, and waits at least
// the Auth-Wait of an auth_http refusal before a failed-login reply.
type sessionGuard struct {
	ss    *session
	inner *auth.Guard // nil with [auth.penalty] enabled = false
}

func (g *sessionGuard) Allow(ctx context.Context, user string) error {
	if g.inner == nil {
		return nil
	}
	return g.inner.Allow(ctx, user)
}

func (g *sessionGuard) Failed(ctx context.Context, user string) {
	d := g.ss.st.cfg.Limits.AuthFailureDelay.Duration
	if g.inner != nil {
		d = g.inner.Record(ctx, user)
	}
	if l := g.ss.lookup; l != nil {
		d, l.wait = max(d, l.wait), 0
	}
	g.ss.srv.loginWait(ctx, d)
}

func (g *sessionGuard) Succeeded(user string) {
	if g.inner != nil {
		g.inner.Succeeded(user)
	}
}

// authenticateHTTP is Session.Authenticate in http mode: the auth_http
// service says whether the login passes, with which credentials the
// backend is logged in to, and may name the backend.
func (ss *session) authenticateHTTP(ctx context.Context, c protocols.Credentials) (protocols.Credentials, error) {
	s := ss.srv
	if c.Mech != "" {
		return protocols.Credentials{}, fmt.Errorf("auth_http cannot check %s", c.Mech)
	}
	if ss.lookup == nil {
		ss.lookup = &httpLogin{}
	}
	l := ss.lookup
	l.attempts++
	l.forced = nil
	res, err := ss.st.authHTTP.Lookup(ctx, auth.HTTPRequest{
		Method: "plain", User: c.Username, Pass: c.Password, Protocol: ss.lc.Protocol,
		Attempt: l.attempts, ClientIP: ss.clientIP(), SSL: ss.clientTLS() != "",
	})
	switch {
	case err != nil:
		s.loginMetrics.lookups.WithLabelValues("error").Inc()
		ss.log.Error("auth_http lookup failed", "user", c.Username, "err", err)
		return protocols.Credentials{}, err
	case !res.OK:
		s.loginMetrics.lookups.WithLabelValues("failed").Inc()
		l.wait = res.Wait
		if res.ErrorCode != "" {
			return protocols.Credentials{}, fmt.Errorf("auth_http: %s (Auth-Error-Code %s)", res.Status, res.ErrorCode)
		}
		return protocols.Credentials{}, fmt.Errorf("auth_http: %s", res.Status)
	case res.Cached:
		s.loginMetrics.lookups.WithLabelValues("cached").Inc()
	default:
		s.loginMetrics.lookups.WithLabelValues("ok").Inc()
	}
	back := c
	if res.User != "" {
		back.Username = res.User
	}
	if res.Pass != "" {
		back.Password = res.Pass
	}
	if res.Server != "" {
		b := ss.backendAt(res.Server)
		if b == nil {
			ss.log.Error("auth_http chose a backend outside the pool", "user", c.Username,
				"server", res.Server, "pool", ss.lc.Pool, "protocol", ss.lc.Protocol)
			return protocols.Credentials{}, fmt.Errorf("%w: Auth-Server %s is not a %s backend of pool %s",
				protocols.ErrAuthUnavailable, res.Server, ss.lc.Protocol, ss.lc.Pool)
		}
		l.forced, back.Backend = b, b.Name
	}
	return back, nil
}

// backendAt is the pool's backend whose address for the session's
// protocol is addr: host:port as configured, IP addresses compared as
// addresses. Names are not resolved.
func (ss *session) backendAt(addr string) *routing.Backend {
	for _, b := range ss.pool.Backends() {
		if a := b.Data().(*backendInfo).addr[ss.proto]; a != "" && sameAddr(a, addr) {
			return b
		}
	}
	return nil
}

func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	ai, bi := net.ParseIP(ah), net.ParseIP(bh)
	return ai != nil && bi != nil && ai.Equal(bi)
}

// excludeForced is what dialBackend must not pick: every backend but the
// one auth_http chose, so that routing places the user there (and binds
// it there) or, if the user lives elsewhere or it is down, nowhere.
func (ss *session) excludeForced() []*routing.Backend {
	if ss.lookup == nil || ss.lookup.forced == nil {
		return nil
	}
	var ex []*routing.Backend
	for _, b := range ss.pool.Backends() {
		if b != ss.lookup.forced {
			ex = append(ex, b)
		}
	}
	return ex
}
