package peer

import (
	"context"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollable reports whether every path is a real socket, which the loop
// can wait on itself. Tests on in-memory conns run in a synctest bubble,
// which a thread sleeping in poll(2) would hold up; they keep the readers
// and Go timers.
func pollable(paths []*path) bool {
	for _, p := range paths {
		if _, ok := p.conn.(syscall.Conn); !ok {
			return false
		}
	}
	return true
}

// runPolled is the heartbeat loop for real sockets: one thread, at the
// heartbeat priority, waits in poll(2) for a datagram or the next
// deadline, then reads, sends and decides itself. No other thread and no
// Go timer stands between the kernel and a heartbeat: on a host whose CPUs
// are saturated, the Go scheduler's own threads (which wake timers and
// hand datagrams to goroutines) can wait their turn for hundreds of
// milliseconds, and a heartbeat sent or seen that late looks like a dead
// peer. Events from other goroutines (link, share, witness, stop) are
// taken between waits, which last at most a quarter interval.
func (l *loop) runPolled(ctx context.Context) {
	// An eventfd, polled with the sockets, that other goroutines write to
	// when they have handed the loop something: it is taken at once.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		defer unix.Close(efd)
		poke := func() { unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) }
		l.n.poke.Store(&poke)
		defer l.n.poke.Store(nil)
		stop := context.AfterFunc(ctx, poke)
		defer stop()
	}
	fds := make([]unix.PollFd, len(l.paths), len(l.paths)+1)
	for i, p := range l.paths {
		rc, err := p.conn.(syscall.Conn).SyscallConn()
		if err != nil {
			continue
		}
		// The descriptor outlives Control: Run closes the sockets only
		// after this loop has returned.
		rc.Control(func(fd uintptr) { fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN} })
	}
	if err == nil {
		fds = append(fds, unix.PollFd{Fd: int32(efd), Events: unix.POLLIN})
	}
	interval := l.n.cfg.Interval.Duration
	buf := make([]byte, MaxDatagram+1)
	l.send(false)
	for {
		select {
		case <-ctx.Done():
			l.leave()
			return
		case up := <-l.linkc:
			l.link(up)
		case p := <-l.sharec:
			l.setShare(p)
		case ok := <-l.witnessc:
			l.witnessAnswer(ok)
		default:
		}
		now := time.Now()
		// Send when an interval has passed, less a little, so the pace
		// does not drift late by a wake-up's delay each time.
		if now.Sub(l.lastSent) >= interval*7/8 {
			l.tick()
		}
		if !l.deadline.IsZero() && !now.Before(l.deadline) {
			// Before the verdict, take what the sockets hold: after a
			// stall of our own they are full of the peer's heartbeats.
			l.readReady(fds, buf, 0)
			if !l.deadline.IsZero() && !time.Now().Before(l.deadline) {
				l.deadline = time.Time{}
				l.lost()
			}
		}
		wait := min(interval/4, time.Until(l.lastSent.Add(interval)))
		if !l.deadline.IsZero() {
			wait = min(wait, time.Until(l.deadline))
		}
		l.readReady(fds, buf, max(wait, time.Millisecond))
	}
}

// readReady waits up to wait for a datagram on any path, then reads
// every datagram already there (a bounded number) and takes it.
func (l *loop) readReady(fds []unix.PollFd, buf []byte, wait time.Duration) {
	timeout := int(wait.Milliseconds())
	for range 256 {
		n, err := unix.Poll(fds, timeout)
		if err != nil || n <= 0 {
			return
		}
		timeout = 0 // after the first wait, only what is there already
		if len(fds) > len(l.paths) && fds[len(l.paths)].Revents&unix.POLLIN != 0 {
			var b [8]byte
			unix.Read(int(fds[len(l.paths)].Fd), b[:]) // a poke: runPolled takes the events
			return
		}
		for i := range l.paths {
			if fds[i].Revents&(unix.POLLIN|unix.POLLERR) == 0 {
				if fds[i].Revents&unix.POLLNVAL != 0 {
					return // closed under us: Run is ending
				}
				continue
			}
			p := l.paths[i]
			// Readable, so the read returns at once; the deadline only
			// guards against a datagram taken by someone else.
			p.conn.SetReadDeadline(time.Now().Add(l.n.cfg.Interval.Duration))
			k, from, err := p.conn.ReadFrom(buf)
			if err != nil {
				continue // an ICMP error or the like: the next poll goes on
			}
			l.receive(datagram{b: append([]byte(nil), buf[:k]...), from: from}, time.Now())
		}
	}
}
