package peer

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// startClock starts the heartbeat clock: a thread of its own, at the
// heartbeat priority, that sleeps in the kernel (nanosleep, not a Go
// timer) and ticks every period until done. A Go timer needs a scheduler
// thread to notice it; on a host whose CPUs are saturated that thread
// may wait its turn for hundreds of milliseconds, and a heartbeat sent
// that late looks like a dead peer to the other node. It returns nil (the
// loop keeps its Go timers) unless every path is a real socket: tests on
// in-memory conns run in a synctest bubble, which a sleeping syscall
// would hold up.
func startClock(paths []*path, period time.Duration, done <-chan struct{}) <-chan time.Time {
	for _, p := range paths {
		if _, ok := p.conn.(syscall.Conn); !ok {
			return nil
		}
	}
	out := make(chan time.Time, 1)
	go func() {
		lockHeartbeatThread()
		ts := unix.NsecToTimespec(period.Nanoseconds())
		for {
			unix.Nanosleep(&ts, nil)
			select {
			case <-done:
				return
			default:
			}
			select {
			case out <- time.Now():
			default: // the loop has not taken the last one: it is busy, not late
			}
		}
	}()
	return out
}

// waitReadable waits in the kernel (poll) until c has a datagram, for at
// most timeout, and reports whether it has. For a conn without a file
// descriptor it reports true at once: the read itself waits.
func waitReadable(c any, timeout time.Duration) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	// The descriptor is used after Control returns: if the conn closes
	// meanwhile, poll fails or times out and the read that follows
	// reports the close.
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout.Milliseconds()))
	return err != nil || n > 0 // an error (EINTR): let the read decide
}
