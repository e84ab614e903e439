package peer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
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

// path is one way heartbeats travel: our socket and the peer's address
// ([peer] listen and address, or listen2 and address2). Every heartbeat
// goes out on each path; one that arrives on any of them counts.
type path struct {
	conn net.PacketConn
	addr string                      // the peer's, as configured
	to   atomic.Pointer[net.UDPAddr] // the peer's, once resolved
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
	want  chan Role // the latest elected role; capacity 1, newest wins
	buf   []byte
	heard uint64 // heartbeats accepted

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
// its own, as the reader does, so that busy goroutines elsewhere (accept
// loops, relays, commands) do not delay a heartbeat.
func (l *loop) run(ctx context.Context, pkts <-chan datagram) {
	lockHeartbeatThread()
	tick := time.NewTicker(l.n.cfg.Interval.Duration)
	defer tick.Stop()
	l.dead = time.NewTimer(l.n.cfg.DeadAfter.Duration)
	defer l.dead.Stop()
	l.send(false)
	for {
		select {
		case <-ctx.Done():
			l.leave()
			return
		case <-tick.C:
			l.send(false)
			if l.role == Standby && !l.peer.alive && l.n.witness.IsValid() {
				l.elect() // the witness may answer now
			}
		case d := <-pkts:
			l.receive(d, time.Now())
		case <-l.dead.C:
			if l.confirmLost(pkts) {
				l.lost()
			}
		case up := <-l.linkc:
			l.link(up)
		case p := <-l.sharec:
			l.share, l.shareLeft = p, shareRepeats
			l.send(false)
		case ok := <-l.witnessc:
			l.witnessBusy, l.witnessOK = false, ok
			if ok {
				l.elect()
			} else if ok, skipped := l.witnessLog.allow(time.Now()); ok {
				// Asked again at the next tick, not at once: a witness
				// that fails fast must not make a busy loop.
				l.n.log.Warn("witness did not answer: staying standby", "witness", l.n.cfg.Witness, "suppressed", skipped)
			}
		}
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

// queued reports whether a datagram waits in any path's socket.
func (l *loop) queued() bool {
	for _, p := range l.paths {
		if queued(p.conn) {
			return true
		}
	}
	return false
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
		if was {
			l.n.log.Info("peer leaving", "peer", m.Node, "peer_role", m.Role.String())
		}
	case !was:
		l.n.log.Info("peer heard", "peer", m.Node, "peer_role", m.Role.String(), "peer_priority", m.Priority, "from", d.from.String())
		l.dead.Reset(l.n.cfg.DeadAfter.Duration)
	default:
		l.dead.Reset(l.n.cfg.DeadAfter.Duration)
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
	go func() { l.witnessc <- l.n.addr.witness(l.n.witness, witnessTimeout) }()
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

// discard drops what the socket queued before Run started reading (a conn
// handed in early): heartbeats sent before this node ran say nothing of
// now, and a stale "standby" from a peer that has since become active
// would win us a role we must not take.
func (l *loop) discard() {
	buf := make([]byte, MaxDatagram+1)
	// A deadline already past would fail the reads before they look; one
	// just ahead returns what is queued, then times out. One deadline for
	// every path, so that a second path costs no extra wait.
	deadline := time.Now().Add(discardWindow)
	for _, p := range l.paths {
		if p.conn.SetReadDeadline(deadline) != nil {
			continue
		}
		for range 1000 { // bounded, even under a flood
			if _, _, err := p.conn.ReadFrom(buf); err != nil {
				break
			}
		}
		p.conn.SetReadDeadline(time.Time{})
	}
}

// read copies datagrams from p to the loop until the socket closes.
func (l *loop) read(p *path, out chan<- datagram, done <-chan struct{}) {
	lockHeartbeatThread()
	buf := make([]byte, MaxDatagram+1) // one more, so an oversized datagram shows
	for {
		k, from, err := p.conn.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // transient (an ICMP error on some systems): not in a hot loop
			select {
			case <-done:
				return
			case <-time.After(l.n.cfg.Interval.Duration):
			}
			continue
		}
		select {
		case out <- datagram{b: bytes.Clone(buf[:k]), from: from}:
		case <-done:
			return
		}
	}
}

// resolve looks up a path's peer address once; heartbeats go out on it
// from then on. Run calls it before the loop starts, so the first
// heartbeat is not lost, and resolveLater if that failed. The address is
// looked up only until it resolves: a peer that moves to another address
// needs a restart.
func (p *path) resolve(ctx context.Context) error {
	a, err := resolveUDP(ctx, p.addr, p.conn.LocalAddr())
	if err == nil {
		p.to.Store(a)
	}
	return err
}

// resolveLater retries resolve every second until it succeeds.
func (l *loop) resolveLater(ctx context.Context, p *path, err error) {
	l.n.log.Error("peer address does not resolve; retrying every second", "peer", p.addr, "err", err)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if p.resolve(ctx) == nil {
			l.n.log.Info("peer address resolved", "peer", p.addr, "ip", p.to.Load().String())
			return
		}
	}
}

// resolveUDP resolves host:port, preferring an IPv4 address when we listen
// on one (such a socket cannot send to IPv6).
func resolveUDP(ctx context.Context, addr string, local net.Addr) (*net.UDPAddr, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	ip := ips[0]
	if la, ok := local.(*net.UDPAddr); ok && la.IP.To4() != nil && len(la.IP) == net.IPv4len {
		for _, c := range ips {
			if c.Unmap().Is4() {
				ip = c.Unmap()
				break
			}
		}
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))), nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// rateLog lets one line through per period and counts the rest.
type rateLog struct {
	every      time.Duration
	next       time.Time
	suppressed int
}

// allow reports whether to log now, and how many lines were held back
// since the last one.
func (r *rateLog) allow(now time.Time) (bool, int) {
	if now.Before(r.next) {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.suppressed, r.next = 0, now.Add(r.every)
	return true, n
}
