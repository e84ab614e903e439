package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"mailproxy/proxy/auth"
	"mailproxy/proxy/config"
	"mailproxy/routing"
	mtls "mailproxy/tls"
)

// state is what one config makes: the config itself, the routing pools,
// the server TLS config and the users. It is built whole, checked whole and
// swapped in at once by Reload (STYLE.md 11); a session takes the state in
// force at its accept and keeps it to the end, so a reload never changes a
// session half-way. The pools are the one part shared between states: a
// pool that stays in the config is the same routing.Pool, reconfigured in
// place, so leases, bindings, health and drains carry over.
type state struct {
	cfg       *config.Config
	listeners map[string]*config.ListenerConfig
	pools     map[string]*routing.Pool
	tlsCfg    *tls.Config         // nil when no listener uses TLS
	auth      *auth.Authenticator // auth.mode = "verify"; nil in passthrough
	penalty   *auth.Penalty       // [auth.penalty]; nil when disabled (logincheck.go)
	authHTTP  *auth.HTTP          // auth.mode = "http"

	// pending are the reconfigurations of pools kept from the old state,
	// checked by build and run by apply when the state is swapped in.
	pending []func() error
	health  struct {
		stop context.CancelFunc
		done sync.WaitGroup
	}
}

func (st *state) listener(name string) *config.ListenerConfig { return st.listeners[name] }

// build makes the state of cfg, reusing old's pools by name (old is nil at
// New). It reads the certificate and users files and changes nothing that
// is in force: any error leaves the server as it was.
func (s *Server) build(cfg *config.Config, old *state) (*state, error) {
	st := &state{cfg: cfg, listeners: map[string]*config.ListenerConfig{}, pools: map[string]*routing.Pool{}}
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		if s.handlers[l.Protocol] == nil {
			return nil, fmt.Errorf("listener %s: no handler for protocol %q", l.Name, l.Protocol)
		}
		st.listeners[l.Name] = l
	}
	var err error
	if st.tlsCfg, err = s.buildTLS(cfg); err != nil {
		return nil, err
	}
	if st.auth, err = s.buildAuth(cfg.Auth); err != nil {
		return nil, err
	}
	if err := s.buildLoginChecks(cfg, st, old); err != nil {
		return nil, err
	}
	for _, pc := range cfg.Pools {
		opts, specs, err := s.poolSpecs(cfg, pc)
		if err != nil {
			return nil, err
		}
		if old != nil && old.pools[pc.Name] != nil {
			p := old.pools[pc.Name]
			if _, err := routing.NewPool(opts, specs); err != nil { // checks what Reconfigure would refuse
				return nil, err
			}
			st.pools[pc.Name] = p
			st.pending = append(st.pending, func() error { return p.Reconfigure(opts, specs) })
			continue
		}
		if st.pools[pc.Name], err = routing.NewPool(opts, specs); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// apply runs the pools' reconfigurations; build checked them.
func (st *state) apply() {
	for _, f := range st.pending {
		if err := f(); err != nil {
			panic("proxy: a reconfiguration that build checked failed: " + err.Error())
		}
	}
	st.pending = nil
}

// buildTLS reads the certificate (unless Options.Certs gave one) and makes
// the server TLS config; nil when no listener uses TLS.
func (s *Server) buildTLS(cfg *config.Config) (*tls.Config, error) {
	if !slices.ContainsFunc(cfg.Listeners, func(l config.ListenerConfig) bool { return l.TLS != "none" && l.TLS != "" }) {
		return nil, nil
	}
	certs := s.certs
	if certs == nil {
		c, err := mtls.NewCertStore(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, err
		}
		certs = c
	}
	minV, err := mtls.ParseMinVersion(cfg.TLS.MinVersion)
	if err != nil {
		return nil, err
	}
	return mtls.ServerConfig(certs, minV), nil
}

func (s *Server) setLevel(cfg *config.Config) {
	if s.level == nil {
		return
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(cfg.Log.Level)); err == nil {
		s.level.Set(l)
	}
}

// Reload swaps in cfg, a config that Load or Parse returned: it builds the
// new state whole (certificate, users file, pools, and the listeners that
// are new or moved, opened when the server is serving), and on any error
// returns it with the old config still in force and nothing changed. Then,
// at once: the new state is in force for every new connection, pools are
// reconfigured in place (backends added, removed or re-weighted, pins and
// policies changed; drains made at runtime and the users' bindings kept),
// the listeners that are gone or moved are closed, health checks restart
// for the new backends, and the log level is set. No live session is
// closed: each keeps the config it started with (a removed listener's
// sessions finish, a removed backend's users keep going there until their
// sessions end or an operator kicks them).
//
// [store] is read by New only; [admin], [peer] and [log] format are not
// the server's: cmd/mailproxy sets them up once. A reload leaves them as
// they were.
func (s *Server) Reload(cfg *config.Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.closed.Load() {
		return ErrServerClosed
	}
	old := s.state()
	st, err := s.build(cfg, old)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrReloadRefused, err)
	}
	added, err := s.openAdded(old, st)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrReloadRefused, err)
	}
	st.apply()
	s.st.Store(st)
	s.reloadState() // runtime drains, weights and pins on top of the new config
	s.setLevel(cfg)
	s.serveAdded(added)
	s.closeRemoved(st)
	s.mu.Lock()
	ctx := s.bgCtx
	s.mu.Unlock()
	if ctx != nil {
		old.stopHealth()
		st.startHealth(s, ctx)
	}
	return nil
}

// openAdded opens, when the listeners are open (ListenAndServe,
// OpenListeners), those of st that old does not have at the same address.
// On an error it closes what it opened: the reload is refused.
func (s *Server) openAdded(old, st *state) (map[string]net.Listener, error) {
	s.mu.Lock()
	serving := s.opened != nil
	s.mu.Unlock()
	added := map[string]net.Listener{}
	if !serving {
		return added, nil
	}
	for _, l := range st.cfg.Listeners {
		if o := old.listener(l.Name); o != nil && o.Address == l.Address {
			continue
		}
		ln, err := s.listenOn(l.Address)
		if err != nil {
			for _, o := range added {
				o.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		added[l.Name] = ln
	}
	return added, nil
}

// serveAdded serves what openAdded opened as part of the open set, or
// closes it when the listeners were closed meanwhile (the pair went
// standby).
func (s *Server) serveAdded(added map[string]net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.opened
	for name, ln := range added {
		if set == nil || s.closed.Load() {
			ln.Close()
			continue
		}
		set.add(s, name, ln)
	}
}

// closeRemoved closes every serving listener whose name st does not have,
// or whose address it moved; their live sessions go on.
func (s *Server) closeRemoved(st *state) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln, e := range s.lns {
		if l := st.listener(e.name); l != nil && l.Address == e.addr {
			continue
		}
		ln.Close()
		delete(s.lns, ln)
		if s.opened != nil {
			s.opened.lns = slices.DeleteFunc(s.opened.lns, func(o net.Listener) bool { return o == ln })
		}
	}
}

// stopHealth stops st's health checks and waits until they have ended.
func (st *state) stopHealth() {
	if st.health.stop != nil {
		st.health.stop()
		st.health.done.Wait()
	}
}

// ErrReloadRefused wraps every error of Reload: the old config stays in
// force.
var ErrReloadRefused = errors.New("reload refused, the old config stays in force")
