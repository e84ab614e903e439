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

// path is one way heartbeats travel: our socket and the peer's address
// ([peer] listen and address, or listen2 and address2). Every heartbeat
// goes out on each path; one that arrives on any of them counts.
type path struct {
	conn net.PacketConn
	addr string                      // the peer's, as configured
	to   atomic.Pointer[net.UDPAddr] // the peer's, once resolved
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
