package proxy

import (
	"context"
	"sync"
	"time"
)

// sessionCtx is a session's context, cancelled by a kick, a backend going
// down or a shutdown: what context.WithCancel(context.Background()) gives,
// in a fraction of the memory a parked session would otherwise keep
// (a cancelCtx holds a map of its children for life once one registered,
// and context.AfterFunc adds a context of its own per call). Children
// and context.AfterFunc register through its AfterFunc method, which the
// context package looks for, and the relay calls that method directly.
type sessionCtx struct {
	mu   sync.Mutex
	done chan struct{} // made by the first Done or cancel
	err  error
	fns  []*func() // to run on cancel, each in its own goroutine
}

var _ context.Context = (*sessionCtx)(nil)

// newSessionCtx returns a session context and its cancel function.
func newSessionCtx() (*sessionCtx, context.CancelFunc) {
	c := &sessionCtx{}
	return c, c.cancel
}

func (c *sessionCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *sessionCtx) Value(any) any               { return nil }

func (c *sessionCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

// forgetDone drops the Done channel (a hundred bytes a parked session
// need not keep) once the login phase, whose dials, handshakes and waits
// are what call Done, is over: from then on the session is tied to c
// through AfterFunc alone, and a later Done makes a new channel, closed
// on cancel as ever. Whoever still held the old one would never see it
// closed: it is only for a session past its login.
func (c *sessionCtx) forgetDone() {
	c.mu.Lock()
	if c.err == nil {
		c.done = nil
	}
	c.mu.Unlock()
}

func (c *sessionCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *sessionCtx) cancel() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = context.Canceled
	if c.done != nil {
		close(c.done)
	}
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for _, f := range fns {
		go (*f)()
	}
}

// AfterFunc arranges for f to run in its own goroutine once c is
// cancelled (at once if it is already); stop, as context.AfterFunc's,
// returns true if it kept f from running.
func (c *sessionCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	p := &f
	c.fns = append(c.fns, p)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, q := range c.fns {
			if q == p {
				last := len(c.fns) - 1
				c.fns[i], c.fns[last] = c.fns[last], nil
				c.fns = c.fns[:last]
				return true
			}
		}
		return false
	}
}
