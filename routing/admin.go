package routing

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Observe records one health result for b and proto: from a health probe,
// or (ok=false) from a real session that failed to reach b, which counts as
// a failed check at once. After fall failures in a row b goes down for the
// protocol and every session of that protocol still held there is killed;
// after rise successes it comes up again. It reports whether the state flipped.
func (p *Pool) Observe(b *Backend, proto Protocol, ok bool, reason string) bool {
	var kill []func()
	p.mu.Lock()
	flipped := b.health[proto].observe(ok, p.opts.Rise, p.opts.Fall, reason)
	if flipped && b.health[proto].down {
		for l := range b.leases.all() {
			if l.Proto == proto {
				kill = p.detach(l, kill)
			}
		}
	}
	state := p.state(b, proto)
	p.mu.Unlock()
	runKills(kill)
	if flipped && p.opts.OnStateChange != nil {
		p.opts.OnStateChange(b, proto, state, reason)
	}
	return flipped
}

// SetDraining starts (on=true) or ends a drain of b: no new users go there,
// users with live sessions there keep going there until their sessions end.
func (p *Pool) SetDraining(b *Backend, on bool) {
	p.mu.Lock()
	b.draining = on
	p.mu.Unlock()
}

// SetWeight changes b's weight for users with no live session.
func (p *Pool) SetWeight(b *Backend, w int) {
	p.mu.Lock()
	b.weight = max(w, 0)
	p.mu.Unlock()
}

// Kick ends every live session on b now and returns how many it ended.
func (p *Pool) Kick(b *Backend) int {
	var kill []func()
	p.mu.Lock()
	n := 0
	for l := range b.leases.all() {
		if l.kicked {
			continue
		}
		// The lease stays live until its session releases it: b is up, and
		// the old connection may still be closing there, so the user must
		// not be placed elsewhere before then.
		l.kicked = true
		n++
		if l.onKill != nil {
			kill = append(kill, l.onKill)
		}
	}
	p.mu.Unlock()
	runKills(kill)
	return n
}

// KickUsers ends every live session on b that has a user (IMAP, POP3; not
// SMTP) and returns how many it ended.
func (p *Pool) KickUsers(b *Backend) int {
	var kill []func()
	p.mu.Lock()
	n := 0
	for l := range b.leases.all() {
		if l.User == "" || l.kicked {
			continue
		}
		l.kicked = true
		n++
		if l.onKill != nil {
			kill = append(kill, l.onKill)
		}
	}
	p.mu.Unlock()
	runKills(kill)
	return n
}

// KickUser ends every live session of user that is not on keep (nil: end
// them all) and returns how many it ended. As with Kick, the leases count
// until their sessions release them.
func (p *Pool) KickUser(user string, keep *Backend) int {
	var kill []func()
	p.mu.Lock()
	n := 0
	for _, b := range p.withRetired() {
		if b == keep {
			continue
		}
		for l := range b.leases.all() {
			if l.User != user || l.kicked {
				continue
			}
			l.kicked = true
			n++
			if l.onKill != nil {
				kill = append(kill, l.onKill)
			}
		}
	}
	p.mu.Unlock()
	runKills(kill)
	return n
}

// SetPin pins user to b (nil: removes the pin, config pins included). A
// pin wins over hashing for a user with no live or lingering binding.
func (p *Pool) SetPin(user string, b *Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b == nil {
		delete(p.pins, user)
		return
	}
	p.pins[user] = b.Name
}

// Pin returns the backend user is pinned to, or "".
func (p *Pool) Pin(user string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pins[user]
}

// MoveLinger is the least time a moved user's binding lingers with no
// session, so that a move holds until the user's next login even with
// linger = 0.
const MoveLinger = time.Minute

// Move re-points user to b: the user's sessions on other backends are
// kicked, and the binding moves to b, lingering for the pool's linger (at
// least MoveLinger), so the user's next session goes there (Dovecot
// director's move). Pins are not changed: a pin applies again once the
// binding has expired. It returns how many sessions it kicked; they count
// no longer.
func (p *Pool) Move(ctx context.Context, user string, b *Backend) (int, error) {
	// Re-point first, then kick: a session that starts in between goes to
	// b, and one on the old backend ends with the kick. The other order
	// could let a new session start on the old backend and stay there.
	p.mu.Lock()
	linger := p.opts.Linger
	p.mu.Unlock()
	if err := p.table.Move(ctx, user, b.Name, max(linger, MoveLinger)); err != nil {
		return 0, fmt.Errorf("move %s: %w", user, err)
	}
	return p.KickUser(user, b), nil
}

// State returns b's state for proto.
func (p *Pool) State(b *Backend, proto Protocol) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state(b, proto)
}

func (p *Pool) state(b *Backend, proto Protocol) State {
	switch {
	case !b.serves[proto] || b.disabled:
		return Disabled
	case b.health[proto].down:
		return Down
	case b.draining:
		return Draining
	}
	return Up
}

// BackendStatus is a snapshot of one backend for /status.
type BackendStatus struct {
	Name     string            `json:"name"`
	State    string            `json:"state"` // worst state over the protocols it serves
	Draining bool              `json:"draining"`
	Weight   int               `json:"weight"`
	Sessions int               `json:"sessions"`
	Users    int               `json:"users"`
	Removed  bool              `json:"removed,omitempty"` // gone from the config, kept for its live sessions
	Health   map[string]string `json:"health"`            // per protocol it serves: up | down
	Reason   map[string]string `json:"reason,omitempty"`
}

// Status returns a snapshot of every backend.
func (p *Pool) Status() []BackendStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]BackendStatus, 0, len(p.backends))
	for _, b := range p.withRetired() {
		s := BackendStatus{
			Name: b.Name, Draining: b.draining, Weight: b.weight, Sessions: b.leases.n, Removed: b.retired,
			Health: map[string]string{}, Reason: map[string]string{},
		}
		users := map[string]bool{}
		for l := range b.leases.all() {
			if l.User != "" {
				users[l.User] = true
			}
		}
		s.Users = len(users)
		worst, serves := Up, false
		for proto := range numProtocols {
			if !b.serves[proto] {
				continue
			}
			serves = true
			h := b.health[proto]
			s.Health[proto.String()] = map[bool]string{false: "up", true: "down"}[h.down]
			if h.reason != "" {
				s.Reason[proto.String()] = h.reason
			}
			if st := p.state(b, proto); severity(st) > severity(worst) {
				worst = st
			}
		}
		if b.disabled || !serves {
			worst = Disabled
		}
		if b.retired {
			worst = Disabled
		}
		s.State = worst.String()
		out = append(out, s)
	}
	return out
}

// withRetired returns the backends in config order, then the retired ones
// by name. The caller holds p.mu.
func (p *Pool) withRetired() []*Backend {
	out := slices.Clone(p.backends)
	var gone []*Backend
	for _, b := range p.byName {
		if b.retired {
			gone = append(gone, b)
		}
	}
	slices.SortFunc(gone, func(a, b *Backend) int { return strings.Compare(a.Name, b.Name) })
	return append(out, gone...)
}

// severity orders states for Status: down is worse than draining, though
// the constants run the other way.
func severity(s State) int {
	return [...]int{Up: 0, Draining: 1, Down: 2, Disabled: 3}[s]
}

// SessionInfo describes one live lease for /users/{user}.
type SessionInfo struct {
	Backend  string `json:"backend"`
	Protocol string `json:"protocol"`
}

// UserSessions lists the live sessions of user, sorted by backend and
// protocol.
func (p *Pool) UserSessions(user string) []SessionInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []SessionInfo
	for _, b := range p.withRetired() {
		for l := range b.leases.all() {
			if l.User == user {
				out = append(out, SessionInfo{Backend: b.Name, Protocol: l.Proto.String()})
			}
		}
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		return cmp.Or(strings.Compare(a.Backend, b.Backend), strings.Compare(a.Protocol, b.Protocol))
	})
	return out
}

// Key turns a login name into the routing key: the name as the backend
// knows it. Unless keepCase, it is lowercased; a name with no @domain gets
// defaultDomain appended when one is set, so "Alice", "alice" and
// "alice@example.org" are one user.
func Key(login string, keepCase bool, defaultDomain string) string {
	if !keepCase {
		login = strings.ToLower(login)
	}
	if defaultDomain != "" && !strings.Contains(login, "@") {
		d := defaultDomain
		if !keepCase {
			d = strings.ToLower(d)
		}
		login += "@" + d
	}
	return login
}
