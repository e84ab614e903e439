package proxy

import (
	"slices"
	"sync"
	"time"

	"mailproxy/routing"
)

// mechRefresh is how often a health check also asks a backend for its
// passthrough mechanisms (an extra command, and STARTTLS for a backend
// with tls = starttls); the other checks only read the greeting.
const mechRefresh = 30 * time.Second

// mechTable holds the passthrough SASL mechanisms (OAUTHBEARER, XOAUTH2)
// each backend announced to the health checks, per protocol. A client of
// IMAP or POP3 is offered a mechanism before its backend is picked, so
// only one that every backend of the pool announced: whichever backend
// the user's routing picks can then take it.
type mechTable struct {
	mu sync.Mutex
	m  map[mechKey]mechEntry
}

type mechKey struct {
	b     *routing.Backend
	proto routing.Protocol
}

type mechEntry struct {
	mechs []string
	at    time.Time
}

// due says whether b's mechanisms for proto should be asked again.
func (t *mechTable) due(b *routing.Backend, proto routing.Protocol, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[mechKey{b, proto}]
	return !ok || now.Sub(e.at) >= mechRefresh
}

func (t *mechTable) set(b *routing.Backend, proto routing.Protocol, mechs []string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[mechKey]mechEntry)
	}
	t.m[mechKey{b, proto}] = mechEntry{mechs: mechs, at: now}
}

// common is what every backend of pool that can take a session of proto
// (not down, not disabled) announced for it; nil while any of them has not
// been asked yet. A down backend gets no new session, so what it lacks
// does not matter until it is up again.
func (t *mechTable) common(pool *routing.Pool, proto routing.Protocol) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	first := true
	for _, b := range pool.Backends() {
		if st := pool.State(b, proto); st == routing.Down || st == routing.Disabled {
			continue
		}
		e, ok := t.m[mechKey{b, proto}]
		if !ok {
			return nil
		}
		if first {
			out, first = slices.Clone(e.mechs), false
			continue
		}
		out = slices.DeleteFunc(out, func(m string) bool { return !slices.Contains(e.mechs, m) })
	}
	return out
}

// passthrough says whether the backends check the logins ([auth] mode =
// "passthrough"), the only mode in which a token can be passed on.
func (st *state) passthrough() bool {
	return st.cfg.Auth.Mode == "" || st.cfg.Auth.Mode == "passthrough"
}
