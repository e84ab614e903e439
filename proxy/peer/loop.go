package peer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"time"
)

// logEvery is how often a repeating complaint (rejected heartbeats, failed
// sends) is logged; the ones in between are counted in the next line.
const logEvery = 10 * time.Second

// discardWindow is how long Run's start waits for the socket's queue.
const discardWindow = time.Millisecond

// datagram is one read from the heartbeat socket.
type datagram struct {
	b    []byte
	from net.Addr
}

// loop is the state of one Run. Its goroutine (run) owns everything but
// the paths' to, which the resolvers fill, and want, which the switcher
// drains.
type loop struct {
	n     *Node
	paths []*path
	guard *guard
	role  Role
	peer  view
	epoch int64
	seq   uint64
	dead  *time.Timer
	// deadline is when the peer counts as lost unless heard; zero: not
	// armed. The dead timer fires at it, or runPolled checks it.
	deadline time.Time
	// polled: every path is a real socket on Linux, and the loop waits on
	// them itself (runPolled) instead of on readers and Go timers.
	polled   bool
	lastSent time.Time
	want     chan Role // the latest elected role; capacity 1, newest wins
	buf      []byte
	heard    uint64 // heartbeats accepted

	linkUp     bool          // [peer] interface up with carrier (true without one)
	linkc      chan bool     // from the link watcher
	reannounce chan struct{} // to the switcher: a conflict was won; capacity 1
	sharec     chan []byte   // from Node.Share
	share      []byte        // the payload the next heartbeats carry
	shareLeft  int           // how many more carry it
	lastShared []byte        // the last payload received, delivered once

	witnessOK   bool      // the witness answered since the peer was lost
	witnessBusy bool      // a question to the witness is out
	witnessc    chan bool // its answer

	rejects, sendErrs, witnessLog rateLog
}

func newLoop(n *Node, paths []*path) *loop {
	l := &loop{n: n, paths: paths, guard: newGuard(n.cfg.Node, n.opts.MaxSkew, n.cfg.DeadAfter.Duration),
		epoch: time.Now().UnixNano(), want: make(chan Role, 1), buf: make([]byte, 0, MaxDatagram),
		rejects: rateLog{every: logEvery}, sendErrs: rateLog{every: logEvery}, witnessLog: rateLog{every: logEvery},
		linkUp: true, linkc: n.linkc, reannounce: make(chan struct{}, 1),
		sharec: make(chan []byte, 16), witnessc: make(chan bool, 1)}
	l.guard.paths = len(paths)
	return l
}

// shareRepeats is how many heartbeats in a row carry a shared payload, as
// UDP may lose one.
const shareRepeats = 3

// run is the heartbeat loop: send every interval, take what arrives, and
// elect again on every change. A node that just started waits dead_after
// for its peer before it claims the active role. It runs on a thread of
// its own, as the readers do, so that busy goroutines elsewhere (accept
// loops, relays, commands) do not delay a heartbeat; on real sockets on
// Linux it hands over to runPolled, which needs no reader and no timer.
func (l *loop) run(ctx context.Context, pkts <-chan datagram) {
	lockHeartbeatThread()
	l.deadline = time.Now().Add(l.n.cfg.DeadAfter.Duration)
	l.dead = time.NewTimer(time.Until(l.deadline))
	defer l.dead.Stop()
	if l.polled {
		l.dead.Stop()
		l.runPolled(ctx)
		return
	}
	tick := time.NewTicker(l.n.cfg.Interval.Duration)
	defer tick.Stop()
	l.send(false)
	for {
		select {
		case <-ctx.Done():
			l.leave()
			return
		case <-tick.C:
			l.tick()
		case d := <-pkts:
			l.receive(d, time.Now())
		case now := <-l.dead.C:
			l.checkDead(pkts, now)
		case up := <-l.linkc:
			l.link(up)
		case p := <-l.sharec:
			l.setShare(p)
		case ok := <-l.witnessc:
			l.witnessAnswer(ok)
		}
	}
}

func (l *loop) setShare(p []byte) {
	l.share, l.shareLeft = p, shareRepeats
	l.send(false)
}

func (l *loop) witnessAnswer(ok bool) {
	l.witnessBusy, l.witnessOK = false, ok
	if ok {
		l.elect()
	} else if ok, skipped := l.witnessLog.allow(time.Now()); ok {
		// Asked again at the next tick, not at once: a witness that fails
		// fast must not make a busy loop.
		l.n.log.Warn("witness did not answer: staying standby", "witness", l.n.cfg.Witness, "suppressed", skipped)
	}
}

// tick sends the periodic heartbeat.
func (l *loop) tick() {
	l.send(false)
	if l.role == Standby && !l.peer.alive && l.n.witness.IsValid() {
		l.elect() // the witness may answer now
	}
}

// checkDead declares the peer lost once its deadline has passed and a
// second look finds nothing from it.
func (l *loop) checkDead(pkts <-chan datagram, now time.Time) {
	if l.deadline.IsZero() {
		return
	}
	if now.Before(l.deadline) {
		l.dead.Reset(l.deadline.Sub(now)) // the timer ran a hair early
		return
	}
	if l.confirmLost(pkts) {
		l.deadline = time.Time{}
		l.lost()
	}
}

// confirmLost looks again before the dead timer's verdict counts: a
// heartbeat may be waiting in the channel (select picks a ready case at
// random) or still in the socket, because this node, not its peer, was
// stalled (a paused VM, a starved CPU). It reports whether the peer is
// still silent.
func (l *loop) confirmLost(pkts <-chan datagram) bool {
	before := l.heard
	wait := time.NewTimer(l.n.cfg.Interval.Duration)
	defer wait.Stop()
	for {
		select {
		case d := <-pkts:
			l.receive(d, time.Now())
			continue
		default:
		}
		if l.heard != before || !l.queued() {
			return l.heard == before
		}
		select { // the reader has yet to hand it over
		case d := <-pkts:
			l.receive(d, time.Now())
		case <-wait.C:
			return l.heard == before
		}
	}
}

// link takes the interface's state: a node without its link can hold no
// address, so it steps down, and does not claim the role until the link is
// back.
func (l *loop) link(up bool) {
	if up == l.linkUp {
		return
	}
	l.linkUp = up
	if up {
		l.n.log.Info("interface up", "interface", l.n.cfg.Interface)
	} else {
		l.n.log.Warn("interface down: stepping down", "interface", l.n.cfg.Interface)
	}
	l.n.setStatus(func(st *Status) { st.LinkUp = up })
	if !l.elect() {
		l.send(false) // the peer learns at once that we are out, or back
	}
}

// receive handles one datagram: refused unless authentic, fresh and not
// ours; otherwise it is the peer's news.
func (l *loop) receive(d datagram, now time.Time) {
	m, err := Decode(d.b, l.n.secret)
	if err == nil {
		err = l.guard.check(m, now)
	}
	if errors.Is(err, errDuplicate) {
		return // the same heartbeat by the other path
	}
	if err != nil {
		l.reject(d.from, err, now)
		return
	}
	was, wasRole := l.peer.alive, l.peer.role
	l.heard++
	l.peer = view{member: member{node: m.Node, priority: m.Priority}, role: m.Role, alive: !m.Leaving}
	l.witnessOK = false
	l.n.setStatus(func(st *Status) {
		st.Peer.Node, st.Peer.Role, st.Peer.Priority = m.Node, m.Role.String(), int(m.Priority)
		st.Peer.Alive, st.Peer.LastHeard = l.peer.alive, now
		st.Peer.Heard++
	})
	switch {
	case m.Leaving:
		l.dead.Stop()
		l.deadline = time.Time{}
		if was {
			l.n.log.Info("peer leaving", "peer", m.Node, "peer_role", m.Role.String())
		}
	case !was:
		l.n.log.Info("peer heard", "peer", m.Node, "peer_role", m.Role.String(), "peer_priority", m.Priority, "from", d.from.String())
		l.dead.Reset(l.n.cfg.DeadAfter.Duration)
		l.deadline = now.Add(l.n.cfg.DeadAfter.Duration)
	default:
		l.dead.Reset(l.n.cfg.DeadAfter.Duration)
		l.deadline = now.Add(l.n.cfg.DeadAfter.Duration)
	}
	conflict := l.role == Active && m.Role == Active && !m.Leaving && (!was || wasRole != Active)
	if conflict {
		l.n.setStatus(func(st *Status) { st.Conflicts++ })
		l.n.log.Warn("conflict: both nodes active", "peer", m.Node)
	}
	if m.Payload != nil && !bytes.Equal(m.Payload, l.lastShared) {
		l.lastShared = m.Payload
		if l.n.opts.OnShared != nil {
			l.n.opts.OnShared(m.Payload)
		}
	}
	if !was && l.peer.alive && l.n.opts.Shared != nil {
		// A peer that (re)appears learns our shared state, which it may
		// have missed while it was away.
		if p := l.n.opts.Shared(); p != nil {
			l.share, l.shareLeft = p, shareRepeats
		}
	}
	changed := l.elect()
	if l.role == Active && !changed && (conflict || !was && l.peer.alive) {
		// We won a conflict, or a peer is back that may have held the
		// address while we could not hear it (it may have stepped down
		// before we saw it active): its clients must learn our hardware
		// address now, not at the next refresh.
		select {
		case l.reannounce <- struct{}{}:
		default:
		}
	}
	if !changed && !was && l.peer.alive {
		l.send(false) // a returning peer learns our role now, not in an interval
	}
}

func (l *loop) reject(from net.Addr, err error, now time.Time) {
	l.n.setStatus(func(st *Status) { st.Peer.Rejected++; st.Peer.LastError = err.Error() })
	if ok, skipped := l.rejects.allow(now); ok {
		l.n.log.Warn("peer heartbeat rejected", "from", addrString(from), "err", err, "suppressed", skipped)
	}
}

// lost is dead_after without a heartbeat.
func (l *loop) lost() {
	if l.peer.alive {
		l.n.log.Warn("peer lost", "peer", l.peer.node, "silent_for", l.n.cfg.DeadAfter.String())
	} else if l.peer.node == "" {
		l.n.log.Info("no peer heard since start", "waited", l.n.cfg.DeadAfter.String())
	}
	l.peer.alive = false
	l.n.setStatus(func(st *Status) { st.Peer.Alive = false })
	l.elect()
}

// elect runs the election and, on a change, announces the new role at once
// and hands it to the switcher. It reports whether the role changed.
func (l *loop) elect() bool {
	r, why := decide(l.n.self, l.n.cfg.Preempt, l.role, l.peer)
	switch {
	case !l.linkUp:
		r, why = Standby, "interface "+l.n.cfg.Interface+" is down"
	case r == Active && l.role != Active && !l.peer.alive && l.n.witness.IsValid() && !l.witnessOK:
		r, why = Standby, "no live peer; asking the witness "+l.n.witness.String()
		l.askWitness()
	}
	if r == l.role {
		l.n.setStatus(func(st *Status) { st.Reason = why })
		return false
	}
	l.role = r
	l.n.log.Info("role "+r.String(), "reason", why)
	l.n.setStatus(func(st *Status) { st.Role, st.Reason, st.Since = r.String(), why, time.Now() })
	l.send(false)
	select {
	case <-l.want: // not applied yet: the newer role replaces it
	default:
	}
	l.want <- r
	return true
}

// askWitness asks the witness, on a goroutine of its own, whether it can
// be reached; the answer comes back on witnessc.
func (l *loop) askWitness() {
	if l.witnessBusy {
		return
	}
	l.witnessBusy = true
	go func() {
		l.witnessc <- l.n.addr.witness(l.n.witness, witnessTimeout)
		l.n.wake()
	}()
}

// leave says goodbye: the peer takes over without waiting for dead_after.
// It is sent twice, as UDP may lose one.
func (l *loop) leave() {
	l.role = Standby
	l.n.setStatus(func(st *Status) { st.Role, st.Reason, st.Since = Standby.String(), "stopping", time.Now() })
	l.send(true)
	l.send(true)
}

// send sends one heartbeat on every path whose peer address is known.
func (l *loop) send(leaving bool) {
	l.seq++
	l.lastSent = time.Now()
	// Without its link a node cannot serve: it tells the peer it is out,
	// as a leaving node does, so the peer takes over now.
	m := Message{Node: l.n.cfg.Node, Priority: l.n.self.priority, Role: l.role, Leaving: leaving || !l.linkUp,
		Epoch: l.epoch, Seq: l.seq, Sent: time.Now()}
	if l.shareLeft > 0 {
		m.Payload = l.share
		l.shareLeft--
	}
	b, err := m.Encode(l.buf[:0], l.n.secret)
	for _, p := range l.paths {
		to := p.to.Load()
		if to == nil {
			continue
		}
		if err == nil {
			_, err = p.conn.WriteTo(b, to)
		}
		if err != nil {
			if ok, skipped := l.sendErrs.allow(time.Now()); ok {
				l.n.log.Warn("peer heartbeat not sent", "to", to.String(), "err", err, "suppressed", skipped)
			}
			err = nil
		}
	}
}
