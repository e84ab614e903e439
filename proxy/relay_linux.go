package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// waiter is a direction's socket and, for a TCP source (direction.tcp),
// what it needs to wait until src has something to read (bytes, the end
// of the stream or an error) or its read deadline passes, parked in the
// network poller holding nothing, and then to read what is there into a
// pooled buffer, which take hands over. It lives inside the direction:
// a parked session keeps it.
type waiter struct {
	rc    syscall.RawConn       // src's socket (under TLS too, for the poller); nil: none
	ready func(fd uintptr) bool // d.readReady, made once: a closure per wait would be garbage per burst
	bp    *[]byte               // what the last wait read: a buffer, or nil and err
	n     int
	err   error
}

// initWaiter sets d up to wait in the network poller when src is TCP.
func (d *direction) initWaiter() {
	s, ok := d.src.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return
	}
	d.w.rc, d.tcp = rc, true
	d.w.ready = d.readReady
}

// wait returns once something was read, or with the poller's error
// (deadline passed, connection closed).
func (w *waiter) wait() error { return w.rc.Read(w.ready) }

// readReady reads into a buffer from the pool; "would block" gives the
// buffer back before the poller parks the goroutine. It is called first
// when the wait starts, then each time the poller says src is readable.
func (d *direction) readReady(fd uintptr) bool {
	pool, w := d.pool(), &d.w
	bp := pool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *bp)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			pool.Put(bp)
			return false
		case err != nil:
			pool.Put(bp)
			w.bp, w.n, w.err = nil, 0, os.NewSyscallError("read", err)
		case n == 0:
			pool.Put(bp)
			w.bp, w.n, w.err = nil, 0, io.EOF
		default:
			w.bp, w.n, w.err = bp, n, nil
		}
		return true
	}
}

// take hands over what the last wait read.
func (w *waiter) take() (*[]byte, int, error) {
	bp, n, err := w.bp, w.n, w.err
	w.bp, w.err = nil, nil
	return bp, n, err
}

const (
	// splice(2) flags. Nonblock makes the pipe side never block (the
	// sockets are non-blocking already), so that waiting is left to the
	// network poller; move is a hint to move pages rather than copy.
	spliceMove     = 0x1
	spliceNonblock = 0x2

	// relayPipeSize is what one splice moves at most, and the size the
	// pipe asks for (F_SETPIPE_SZ, the same on every architecture). The
	// kernel may refuse, over /proc/sys/fs/pipe-max-size or a user's pipe
	// quota; the default 64 KiB works too, in more calls.
	relayPipeSize = 1 << 20
	fSetPipeSz    = 0x407
)

// spliceBulk moves the rest of a bulk burst from src to dst in the kernel,
// through a pipe of its own, until src pauses for relayLinger, ends
// (io.EOF) or fails. The pipe is closed when it returns. Every splice into
// the pipe finds it empty, so "would block" on that side is src having
// nothing; what went in is all spliced out to dst before the next one.
// It returns errNoPipe, having moved nothing, when it cannot splice.
func (d *direction) spliceBulk() error {
	s, err := newSplicer(d.w.rc, d.dst())
	if err != nil {
		return errNoPipe
	}
	defer s.close()
	var renew time.Time
	for moved := false; ; moved = true {
		if now := time.Now(); now.After(renew) {
			d.src.SetReadDeadline(d.st.lingerDeadline(now))
			renew = now.Add(relayLinger / 4)
		}
		n, err := s.fill()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil // the burst is over: wait for the next one
		case errors.Is(err, syscall.EINVAL) && !moved:
			return errNoPipe // src or dst cannot splice; nothing was read
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		d.dst().SetWriteDeadline(time.Now().Add(d.st.idle))
		m, err := s.drain(n)
		d.total += int64(m)
		if err != nil {
			return stalled(err)
		}
	}
}

// splicer is the pipe of one bulk burst and the raw conns it splices
// between. Its callbacks report through n and err.
type splicer struct {
	src, dst      syscall.RawConn
	rfd, wfd      int // the pipe's ends
	inPipe        int // bytes in the pipe, not yet spliced out
	n             int
	err           error
	fillf, drainf func(fd uintptr) bool // made once per burst
}

func newSplicer(src syscall.RawConn, dst net.Conn) (*splicer, error) {
	tc, ok := dst.(*net.TCPConn)
	if !ok {
		return nil, syscall.EINVAL
	}
	dc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, err
	}
	syscall.Syscall(syscall.SYS_FCNTL, uintptr(p[1]), fSetPipeSz, relayPipeSize) // best effort
	s := &splicer{src: src, dst: dc, rfd: p[0], wfd: p[1]}
	s.fillf, s.drainf = s.fillOnce, s.drainOnce
	return s, nil
}

func (s *splicer) close() {
	syscall.Close(s.rfd)
	syscall.Close(s.wfd)
}

// fill splices what src has into the empty pipe, parking in the network
// poller until src is readable or its read deadline passes. Zero bytes
// and no error is the end of src.
func (s *splicer) fill() (int, error) {
	s.n, s.err = 0, nil
	if err := s.src.Read(s.fillf); err != nil {
		return 0, err
	}
	return s.n, s.err
}

func (s *splicer) fillOnce(fd uintptr) bool {
	for {
		n, err := syscall.Splice(int(fd), nil, s.wfd, nil, relayPipeSize, spliceMove|spliceNonblock)
		switch err {
		case nil:
			s.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the pipe is empty: it is src that has nothing yet
		default:
			s.err = os.NewSyscallError("splice", err)
			return true
		}
	}
}

// drain splices the n bytes in the pipe out to dst, parking in the
// network poller while dst's send buffer is full. It returns how many
// went out.
func (s *splicer) drain(n int) (int, error) {
	s.inPipe, s.n, s.err = n, 0, nil
	if err := s.dst.Write(s.drainf); err != nil {
		return s.n, err
	}
	return s.n, s.err
}

func (s *splicer) drainOnce(fd uintptr) bool {
	for s.inPipe > 0 {
		n, err := syscall.Splice(s.rfd, nil, int(fd), nil, s.inPipe, spliceMove|spliceNonblock)
		switch {
		case err == nil && n > 0:
			s.inPipe -= int(n)
			s.n += int(n)
		case err == nil:
			s.err = io.ErrUnexpectedEOF // the pipe ran dry: cannot happen
			return true
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			return false // dst cannot take more yet
		default:
			s.err = os.NewSyscallError("splice", err)
			return true
		}
	}
	return true
}
