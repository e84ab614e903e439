package protocols

import (
	"context"
	"errors"
)

// LoginAllowed asks the Guard whether user may try a login now. On
// ErrLoginRefused the protocol answers with a temporary failure and
// contacts no backend.
func (s *Session) LoginAllowed(ctx context.Context, user string) error {
	if s.Guard == nil {
		return nil
	}
	return s.Guard.Allow(ctx, user)
}

// LoginSucceeded records that s.User logged in (LoggedIn) and tells the
// Guard.
func (s *Session) LoginSucceeded() {
	s.LoggedIn = true
	if s.Guard != nil {
		s.Guard.Succeeded(s.User)
	}
}

// ErrLoginRefused is a login attempt refused before any check because
// the client or the user failed too often (LoginGuard.Allow).
var ErrLoginRefused = errors.New("too many failed logins")

// ErrAuthUnavailable is a check of the credentials that could not be made
// (an auth service unreachable): a temporary failure for the client, never
// a login, and not a failed one either.
var ErrAuthUnavailable = errors.New("authentication service unavailable")

// LoginGuard is the proxy's brute-force protection for one session, bound
// to its client address. It is called from the session's goroutine.
type LoginGuard interface {
	// Allow returns ErrLoginRefused (after the penalty delay) when user,
	// or the client address, failed too often lately; else nil at once.
	Allow(ctx context.Context, user string) error
	// Failed records a failed login of user and waits the penalty, which
	// grows with the failures, or until ctx ends.
	Failed(ctx context.Context, user string)
	// Succeeded forgets user's failures from this address.
	Succeeded(user string)
}

// MechProber is a Handler whose health probe can also ask a backend which
// passthrough mechanisms (PassthroughMechs) it offers, for protocols whose
// backend is picked only at login (the proxy offers clients what every
// backend of the pool offers). b is the dialled backend, TLS and StartTLS
// set, not yet greeted; the caller closes it and sets the deadline.
type MechProber interface {
	// ProbeMechs reads the greeting (an error, as Probe's, is a failed
	// check), does STARTTLS when b.StartTLS, asks for the capabilities and
	// ends politely. mechs is nil when the backend would not say.
	ProbeMechs(ctx context.Context, b *Backend) (mechs []string, err error)
}
