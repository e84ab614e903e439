package proxy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"

	"mailproxy/proxy/config"
)

// This file is the server's side of the active/standby pair (proxy/peer):
// an active instance serves its listeners, a standby one holds none open
// (DESIGN.md), so the listeners open and close with the role while the
// server, its health checks and its admin API keep running. With
// HoldListeners a standby keeps each listener's address bound but not
// listening, so a connection that reaches it is refused at once and
// becoming active only has to call listen(2).

// listenerSet is what one OpenListeners opened, and what reloads added to
// it since.
type listenerSet struct {
	lns     []net.Listener // guarded by Server.mu
	serving sync.WaitGroup // one per listener, until its Serve returns
	closed  chan struct{}  // closed when the set is closed
}

// add serves ln as the listener called name, as part of the set. The
// caller holds s.mu.
func (set *listenerSet) add(s *Server, name string, ln net.Listener) {
	set.lns = append(set.lns, ln)
	// Tracked here as well as by Serve, so that Listeners reports it
	// serving as soon as we return, and Shutdown closes it even if Serve
	// has not started yet.
	s.lns[ln] = lnEntry{name: name, addr: s.state().listener(name).Address}
	set.serving.Go(func() {
		if err := s.Serve(name, ln); !errors.Is(err, ErrServerClosed) {
			s.log.Error("listener stopped", "listener", name, "err", err)
		}
	})
}

// OpenListeners opens every configured listener and serves each on its own
// goroutine, as ListenAndServe does but without blocking; reloads open and
// close listeners of the set from then on. It does nothing when they are
// open already. When one cannot be opened, it closes the others and
// returns the error: a standby that becomes active retries (the old active
// one may still hold the port for a moment). After Shutdown or Close it
// returns ErrServerClosed.
func (s *Server) OpenListeners() error {
	s.reloadMu.Lock() // the config must not change between listen and serve
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrServerClosed
	}
	if s.opened != nil {
		return nil
	}
	cfg := s.state().cfg
	lns, err := s.listenAll()
	if err != nil {
		return err
	}
	set := &listenerSet{closed: make(chan struct{})}
	for i, ln := range lns {
		set.add(s, cfg.Listeners[i].Name, ln)
	}
	s.opened = set
	return nil
}

// CloseListeners closes what OpenListeners opened and waits until they no
// longer accept, so Listeners reports them as not serving. Live sessions go
// on; CloseSessions ends them.
func (s *Server) CloseListeners() {
	s.mu.Lock()
	set := s.opened
	s.opened = nil
	var lns []net.Listener
	if set != nil {
		lns = slices.Clone(set.lns)
		for _, ln := range lns {
			delete(s.lns, ln)
		}
		close(set.closed)
	}
	s.mu.Unlock()
	if set == nil {
		return
	}
	for _, ln := range lns {
		ln.Close()
	}
	set.serving.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold {
		if err := s.holdLocked(); err != nil {
			s.log.Warn("listener addresses not held while standby; they open on activation", "err", err)
		}
	}
}

// HoldListeners binds every listener's address without listening (Linux
// only; with IP_FREEBIND, so an address not yet on the host can be
// bound), and binds them again after each CloseListeners. OpenListeners
// then listens on the held sockets. An error means none is held; the
// listeners still open on OpenListeners. With Options.Listen set it does
// nothing: that function alone opens the listeners.
func (s *Server) HoldListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ownListen {
		return nil
	}
	s.hold = true
	return s.holdLocked()
}

func (s *Server) holdLocked() error {
	if s.closed.Load() || s.opened != nil || s.held != nil {
		return nil
	}
	cfg := s.state().cfg
	held := make(map[string]*heldSocket, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		if config.IsUnixPath(l.Address) || held[l.Address] != nil {
			continue // a unix socket has no address to wait for
		}
		h, err := holdTCP(l.Address)
		if err != nil {
			for _, o := range held {
				o.close()
			}
			return fmt.Errorf("listener %s: %w", l.Name, err)
		}
		held[l.Address] = h
	}
	s.held = held
	return nil
}

// releaseHeld closes the held sockets; s.mu is held.
func (s *Server) releaseHeld() {
	for _, h := range s.held {
		h.close()
	}
	s.held = nil
}

// CloseSessions ends every live session at once, as Close does but
// without its goodbye (which may take a second), and keeps the server
// running. It returns how many sessions there were.
func (s *Server) CloseSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.live {
		ss.cancel()
	}
	return len(s.live)
}

// listenAll opens every configured listener, in config order; on an error
// it closes those it opened.
func (s *Server) listenAll() ([]net.Listener, error) {
	cfg := s.state().cfg
	lns := make([]net.Listener, 0, len(cfg.Listeners))
	held := s.held
	s.held = nil
	defer func() { // held for listeners a reload has removed since
		for _, h := range held {
			h.close()
		}
	}()
	for _, l := range cfg.Listeners {
		var ln net.Listener
		var err error
		switch h := held[l.Address]; {
		case h != nil:
			delete(held, l.Address)
			ln, err = h.listen()
		case s.hold && !config.IsUnixPath(l.Address):
			// Not held (the hold failed, or a reload added it): bind
			// now, with IP_FREEBIND all the same, as the address may be
			// added only after.
			if h, err = holdTCP(l.Address); err == nil {
				ln, err = h.listen()
			}
		default:
			ln, err = s.listenOn(l.Address)
		}
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
