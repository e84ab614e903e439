package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// This file is the server's side of the active/standby pair (proxy/peer):
// an active instance serves its listeners, a standby one holds none open
// (DESIGN.md), so the listeners open and close with the role while the
// server, its health checks and its admin API keep running. With
// HoldListeners a standby keeps each listener's address bound but not
// listening, so a connection that reaches it is refused at once and
// becoming active only has to call listen(2).

// listenerSet is what one OpenListeners opened.
type listenerSet struct {
	lns     []net.Listener
	serving sync.WaitGroup // one per listener, until its Serve returns
}

// OpenListeners opens every configured listener and serves each on its own
// goroutine, as ListenAndServe does but without blocking. It does nothing
// when they are open already. When one cannot be opened, it closes the
// others and returns the error: a standby that becomes active retries (the
// old active one may still hold the port for a moment). After Shutdown or
// Close it returns ErrServerClosed.
func (s *Server) OpenListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrServerClosed
	}
	if s.opened != nil {
		return nil
	}
	lns, err := s.listenAll()
	if err != nil {
		return err
	}
	set := &listenerSet{lns: lns}
	for i, ln := range lns {
		name := s.cfg.Listeners[i].Name
		// Tracked here as well as by Serve, so that Listeners reports it
		// serving as soon as we return, and Shutdown closes it even if
		// Serve has not started yet.
		s.lns[&set.lns[i]] = name
		set.serving.Go(func() {
			if err := s.Serve(name, ln); !errors.Is(err, ErrServerClosed) {
				s.log.Error("listener stopped", "listener", name, "err", err)
			}
		})
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
	if set != nil {
		for i := range set.lns {
			delete(s.lns, &set.lns[i])
		}
	}
	s.mu.Unlock()
	if set == nil {
		return
	}
	for _, ln := range set.lns {
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
	held := make([]*heldSocket, 0, len(s.cfg.Listeners))
	for _, l := range s.cfg.Listeners {
		h, err := holdTCP(l.Address)
		if err != nil {
			for _, o := range held {
				o.close()
			}
			return fmt.Errorf("listener %s: %w", l.Name, err)
		}
		held = append(held, h)
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
	lns := make([]net.Listener, 0, len(s.cfg.Listeners))
	held := s.held
	s.held = nil
	for i, l := range s.cfg.Listeners {
		var ln net.Listener
		var err error
		switch {
		case held != nil:
			ln, err = held[i].listen()
			held[i] = nil
		case s.hold:
			// Not held (the hold failed): bind now, with IP_FREEBIND
			// all the same, as the address may be added only after.
			var h *heldSocket
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
			if held != nil {
				for _, h := range held[i+1:] {
					h.close()
				}
			}
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
