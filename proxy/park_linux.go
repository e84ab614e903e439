package proxy

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollerSys is the poller's epoll instance. Its descriptor is itself
// registered with Go's network poller (an epoll descriptor is readable
// when it has events), so the goroutine that collects events parks like
// any network wait and holds no thread.
type pollerSys struct {
	epfd int
	file *os.File // owns epfd
	done chan struct{}
}

// newPoller starts the poller of a server whose relays have the idle
// timeout idle.
func newPoller(idle time.Duration) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), "park-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{parked: make(map[uint64]*direction), tick: sweepTick(idle),
		sys: pollerSys{epfd: fd, file: f, done: make(chan struct{})}}
	go p.loop(rc)
	return p, nil
}

// loop hands every event to ready, and sweeps every tick, until the
// poller is closed.
func (p *poller) loop(rc syscall.RawConn) {
	defer close(p.sys.done)
	var evs [128]unix.EpollEvent
	n := 0
	collect := func(fd uintptr) bool {
		for {
			k, err := unix.EpollWait(int(fd), evs[:], 0)
			if err == unix.EINTR {
				continue
			}
			n = max(k, 0)
			return n > 0 || err != nil
		}
	}
	next := time.Now().Add(p.tick)
	for {
		p.sys.file.SetReadDeadline(next)
		n = 0
		err := rc.Read(collect)
		if now := time.Now(); !now.Before(next) {
			p.sweep()
			next = now.Add(p.tick)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return // closed
		}
		for _, ev := range evs[:n] {
			p.ready(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// watch registers the socket under raw for one readiness report under
// token. An earlier registration of the same socket (one-shot, already
// reported or taken back) is re-armed rather than removed and added:
// sockets are never unregistered, the kernel drops them when they close.
func (p *poller) watch(raw syscall.RawConn, token uint64) error {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd:     int32(uint32(token)), Pad: int32(uint32(token >> 32)),
	}
	var err error
	cerr := raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(p.sys.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		if err == unix.ENOENT {
			err = unix.EpollCtl(p.sys.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if cerr != nil {
		return cerr
	}
	if err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unwatch stops the one readiness report a socket taken back from the
// poller still has pending; the next watch re-arms it.
func (p *poller) unwatch(raw syscall.RawConn) {
	ev := unix.EpollEvent{Events: unix.EPOLLONESHOT}
	raw.Control(func(fd uintptr) {
		unix.EpollCtl(p.sys.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
	})
}

func (s *pollerSys) close() {
	s.file.Close()
	<-s.done
}
