package peer

import (
	"context"
	"time"
)

// maxRetry caps the wait between attempts to open the listeners.
const maxRetry = 5 * time.Second

// applied is what the switcher has done so far.
type applied struct {
	open     bool // the client listeners are open
	hooked   bool // hooks says which commands ran last
	hooks    Role
	notified bool // told says which role OnRole heard last
	told     Role
	failures int // failed attempts to open the listeners in a row
}

// actuate applies elected roles, one after another, starting with the
// standby every node starts in, on its own goroutine
// so that slow commands never hold up the heartbeats. A role elected while
// another is being applied replaces any that is still waiting; only the
// newest matters.
//
// Active: run on_active (to bring up a virtual IP before binding to it),
// then open the listeners, retrying with backoff while they fail and the
// role holds. Standby: close the listeners, end the live sessions, run
// on_standby. Ending the sessions is deliberate: the new active instance
// cannot see this one's leases, so a session left here could put a user on
// two backends at once (DESIGN.md's invariant), and with a virtual IP gone
// it is dead anyway. Clients reconnect to the active instance.
func (n *Node) actuate(ctx context.Context, want <-chan Role) {
	var a applied
	n.stepDown(ctx, &a, true) // every node starts standby; on_standby cleans up after a crash
	target := Standby
	var retry <-chan time.Time
	for {
		select {
		case target = <-want:
		case <-retry:
		case <-ctx.Done():
			n.stepDown(context.WithoutCancel(ctx), &a, false)
			return
		}
		retry = nil
		if target == Active {
			retry = n.activate(ctx, &a)
		} else {
			n.stepDown(ctx, &a, true)
		}
	}
}

// activate brings a to Active; it returns when to try again, or nil.
func (n *Node) activate(ctx context.Context, a *applied) <-chan time.Time {
	if !a.hooked || a.hooks != Active {
		runCommands(ctx, n.log, "on_active", n.cfg.OnActive, n.opts.CommandTimeout, n.env(Active))
		a.hooked, a.hooks = true, Active
	}
	if !a.open && n.opts.Service != nil {
		if err := n.opts.Service.OpenListeners(); err != nil {
			a.failures++
			wait := min(n.cfg.Interval.Duration<<min(a.failures-1, 16), maxRetry)
			n.log.Error("active, but the listeners do not open; retrying", "err", err, "retry_in", wait.String(), "attempt", a.failures)
			return time.After(wait)
		}
		n.log.Info("listeners open")
	}
	a.open, a.failures = true, 0
	n.notify(a, Active)
	return nil
}

// stepDown brings a to Standby. On shutdown (endSessions false) the live
// sessions are left to the server's graceful shutdown.
func (n *Node) stepDown(ctx context.Context, a *applied, endSessions bool) {
	a.failures = 0
	if a.open && n.opts.Service != nil {
		n.opts.Service.CloseListeners()
		ended := 0
		if endSessions {
			ended = n.opts.Service.CloseSessions()
		}
		n.log.Info("listeners closed", "sessions_ended", ended)
	}
	a.open = false
	if !a.hooked || a.hooks != Standby {
		runCommands(ctx, n.log, "on_standby", n.cfg.OnStandby, n.opts.CommandTimeout, n.env(Standby))
		a.hooked, a.hooks = true, Standby
	}
	n.notify(a, Standby)
}

func (n *Node) notify(a *applied, r Role) {
	if a.notified && a.told == r {
		return
	}
	a.notified, a.told = true, r
	if n.opts.OnRole != nil {
		n.opts.OnRole(r)
	}
}
