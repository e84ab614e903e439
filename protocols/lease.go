package protocols

import (
	"context"
	"sync"
)

// Lease is a protocol's hold on one user's binding to one backend, from
// Session.Route. While it is held, every new session of the user (IMAP,
// POP3, another delivery) goes to the same backend, and the other way
// round. The session goroutine that got it owns it.
type Lease struct {
	// Backend is the backend's name. Leases with the same name are on the
	// same backend: a protocol may carry them on one connection.
	Backend string

	dial    func(ctx context.Context, hello func(context.Context, *Backend) error) (*Backend, error)
	release func()
	once    sync.Once
}

// NewLease is how the proxy hands out a lease: dial connects to the
// backend, release ends the hold.
func NewLease(backend string, dial func(context.Context, func(context.Context, *Backend) error) (*Backend, error), release func()) *Lease {
	return &Lease{Backend: backend, dial: dial, release: release}
}

// Dial connects to the lease's backend and runs hello (greeting, STARTTLS),
// as Session.Dial does, but to this backend only: a backend that cannot be
// reached counts as a failed health check and the error comes back. The
// connection is closed when routing ends the lease early (the backend went
// down, or an operator kicked it). Closing the Backend does not release the
// lease, nor does releasing the lease close the Backend.
func (l *Lease) Dial(ctx context.Context, hello func(context.Context, *Backend) error) (*Backend, error) {
	return l.dial(ctx, hello)
}

// Release ends the hold; the user's binding lingers as after any session.
// Extra calls do nothing.
func (l *Lease) Release() { l.once.Do(l.release) }
