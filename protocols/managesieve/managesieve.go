// Package managesieve is mailproxy's ManageSieve (RFC 5804): the client
// dialogue before login (the capability greeting, CAPABILITY, NOOP,
// LOGOUT, STARTTLS, AUTHENTICATE with the SASL mechanisms PLAIN (RFC 4616)
// and LOGIN, their initial response a quoted string or a literal), the
// backend dialogue (greeting, STARTTLS, Pigeonhole's XCLIENT, login) and
// the health probe. After login the proxy relays bytes.
//
// The greeting must list the Sieve extensions the backends support
// before the user, and so the backend, is known: the Handler announces
// those of the last backend greeting it read (health probes read one at
// start and every interval after), on the assumption that the backends of
// a pool run one configuration.
package managesieve

import (
	"sync/atomic"

	"mailproxy/protocols"
)

// maxErrors is how many bad commands and failed logins a client may have
// before login; the last one closes the connection.
const maxErrors = 10

// Handler is the ManageSieve protocols.Handler. The zero value is ready to
// use; it must not be copied after first use (it keeps the backends'
// capabilities), so hand it to the proxy as a pointer.
type Handler struct {
	caps atomic.Pointer[[]capability] // the backends' announced, as relayed
}

var _ protocols.Handler = (*Handler)(nil)

// learn keeps what a backend announced for later greetings: its Sieve
// capabilities. SASL and STARTTLS are mailproxy's own, and the rest
// (OWNER, UNAUTHENTICATE, XCLIENT, ...) belong to a backend's session.
func (h *Handler) learn(caps []capability) {
	var keep []capability
	for _, c := range caps {
		switch c.name {
		case "IMPLEMENTATION", "SIEVE", "NOTIFY", "MAXREDIRECTS", "VERSION", "LANGUAGE":
			keep = append(keep, c)
		}
	}
	h.caps.Store(&keep)
}

// backendCaps returns the last learnt capabilities, or a minimal set
// (RFC 5804 §1.7 requires IMPLEMENTATION, SIEVE and VERSION) before any
// backend has greeted.
func (h *Handler) backendCaps() []capability {
	if p := h.caps.Load(); p != nil {
		return *p
	}
	return []capability{
		{name: "IMPLEMENTATION", value: "mailproxy", hasValue: true},
		{name: "SIEVE", value: "", hasValue: true},
		{name: "VERSION", value: "1.0", hasValue: true},
	}
}
