package peer

import (
	"context"
	"time"
)

// maxRetry caps the wait between attempts to open the listeners or add
// the addresses.
const maxRetry = 5 * time.Second

// applied is what the switcher has done so far.
type applied struct {
	open     bool // the client listeners are open
	vip      bool // the virtual addresses are on the interface
	notified bool // told says which role OnRole heard last
	told     Role
	failures int                // failed attempts to activate in a row
	stopAnn  context.CancelFunc // ends the announcer of this active period; nil when none runs
	annDone  chan struct{}
}

// actuate applies elected roles, one after another, starting with the
// standby every node starts in, on its own goroutine so that nothing it
// does holds up the heartbeats. A role elected while another is being
// applied replaces any that is still waiting; only the newest matters.
// on_active and on_standby run on the hook runner, after the switch and
// without holding it up: a slow command never delays a role change.
//
// Active: listen on the held sockets, add the virtual addresses, announce
// them (then keep announcing, see announceGaps), accept. Standby: remove
// the addresses, close the listeners, end the live sessions. Ending the
// sessions is deliberate: the new active instance cannot see this one's
// leases, so a session left here could put a user on two backends at once
// (DESIGN.md's invariant), and with the address gone it is dead anyway.
// Clients reconnect to the active instance.
//
// Once ctx is done it never activates again: a node that is shutting down
// stays standby.
func (n *Node) actuate(ctx context.Context, want <-chan Role, reannounce <-chan struct{}) {
	hooks := newHookRunner(n)
	go hooks.run()
	var a applied
	n.hold()
	n.stepDown(ctx, &a, hooks, true) // every node starts standby: an address left by a crash goes
	target := Standby
	var retry <-chan time.Time
	for {
		select {
		case target = <-want:
		case <-retry:
		case <-reannounce:
			if a.vip && ctx.Err() == nil {
				n.log.Info("peer back or conflict won: announcing the addresses again")
				n.startAnnouncer(ctx, &a)
			}
			continue
		case <-ctx.Done():
			n.stepDown(context.WithoutCancel(ctx), &a, hooks, false)
			hooks.close()
			return
		}
		retry = nil
		if ctx.Err() != nil {
			continue // shutting down: the ctx.Done case steps down
		}
		if target == Active {
			retry = n.activate(ctx, &a, hooks)
		} else {
			n.stepDown(ctx, &a, hooks, true)
		}
	}
}

// hold asks the service, if it can, to bind the listeners' addresses now,
// so that activation only has to listen.
func (n *Node) hold() {
	h, ok := n.opts.Service.(interface{ HoldListeners() error })
	if !ok {
		return
	}
	if err := h.HoldListeners(); err != nil {
		n.log.Warn("listener addresses not held while standby; they open on activation", "err", err)
	}
}

// activate brings a to Active; it returns when to try again, or nil.
func (n *Node) activate(ctx context.Context, a *applied, hooks *hookRunner) <-chan time.Time {
	if !a.open && n.opts.Service != nil {
		if err := n.opts.Service.OpenListeners(); err != nil {
			return n.retryLater(a, "the listeners do not open", err)
		}
		a.open = true
		n.log.Info("listeners open")
	}
	if n.hasVIP() && !a.vip {
		if err := n.addr.add(); err != nil {
			return n.retryLater(a, "the addresses cannot be added", err)
		}
		a.vip = true
		n.log.Info("addresses added", "vip", n.cfg.VIP, "interface", n.cfg.Interface)
		n.startAnnouncer(ctx, a)
	}
	a.failures = 0
	if !a.notified || a.told != Active {
		n.setStatus(func(st *Status) { st.Applied = Active.String(); st.Takeovers++ })
	}
	n.notify(a, Active)
	hooks.want(Active)
	return nil
}

func (n *Node) retryLater(a *applied, what string, err error) <-chan time.Time {
	a.failures++
	wait := min(n.cfg.Interval.Duration<<min(a.failures-1, 16), maxRetry)
	n.log.Error("active, but "+what+"; retrying", "err", err, "retry_in", wait.String(), "attempt", a.failures)
	return time.After(wait)
}

// stepDown brings a to Standby: addresses first, so no new client is
// drawn here, then listeners and sessions. On shutdown (endSessions false)
// the live sessions are left to the server's graceful shutdown.
func (n *Node) stepDown(ctx context.Context, a *applied, hooks *hookRunner, endSessions bool) {
	a.failures = 0
	n.stopAnnouncer(a)
	if n.hasVIP() {
		// Always, not only when we added them: at start an address may be
		// left from a crash, and a lost link may have raced our add.
		if err := n.addr.remove(); err != nil {
			n.log.Error("addresses not removed", "err", err)
		} else if a.vip {
			n.log.Info("addresses removed", "vip", n.cfg.VIP, "interface", n.cfg.Interface)
		}
		a.vip = false
	}
	if a.open && n.opts.Service != nil {
		n.opts.Service.CloseListeners()
		ended := 0
		if endSessions {
			ended = n.opts.Service.CloseSessions()
		}
		n.log.Info("listeners closed", "sessions_ended", ended)
	}
	a.open = false
	n.setStatus(func(st *Status) { st.Applied = Standby.String() })
	n.notify(a, Standby)
	hooks.want(Standby)
}

// startAnnouncer (re)starts the announcements of this active period from
// the top of the schedule.
func (n *Node) startAnnouncer(ctx context.Context, a *applied) {
	n.stopAnnouncer(a)
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	a.stopAnn, a.annDone = cancel, done
	go func() {
		defer close(done)
		n.announce(actx)
	}()
}

func (n *Node) stopAnnouncer(a *applied) {
	if a.stopAnn == nil {
		return
	}
	a.stopAnn()
	<-a.annDone
	a.stopAnn, a.annDone = nil, nil
}

// announce sends the announcements at once, after each of announceGaps,
// then every announceRefresh until ctx is done.
func (n *Node) announce(ctx context.Context) {
	errs := rateLog{every: logEvery}
	once := func() {
		k, err := n.addr.announce()
		n.setStatus(func(st *Status) { st.Announcements += uint64(k) })
		if err != nil {
			if ok, skipped := errs.allow(time.Now()); ok {
				n.log.Error("address announcement failed", "err", err, "suppressed", skipped)
			}
		}
	}
	once()
	for _, gap := range announceGaps {
		select {
		case <-ctx.Done():
			return
		case <-time.After(gap):
		}
		once()
	}
	t := time.NewTicker(announceRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			once()
		}
	}
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

// hasVIP reports whether the node manages addresses ([peer] vip); a node
// with only a witness has an addresser for its ARP questions alone.
func (n *Node) hasVIP() bool { return n.addr != nil && len(n.cfg.VIP) > 0 }
