package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailproxy/protocols"
	"mailproxy/proxy/proxyproto"
)

// relayLinger is how long a direction that is moving a bulk burst keeps
// its splice pipe (or, where the kernel cannot splice, its large buffer)
// after its last byte: long enough that a transfer never gives it up
// between two segments, short enough that idle sessions hold none.
const relayLinger = time.Second

// Buffer sizes. A burst is first read into a small buffer: an IMAP or POP3
// command or response, a LOGOUT exchange, fits, and never goes near a
// pipe. Only a read that fills it makes the rest of the burst bulk: spliced
// between TCP connections, copied through the large buffer otherwise (one
// full TLS record).
const (
	smallBuf = 4 << 10
	largeBuf = 16 << 10
)

// replyPark bounds how long the backend to client direction waits for
// its next burst before it parks. That side speaks in answer to the
// client (or, rarely, unprompted: an IDLE update), and a command the
// client to backend direction forwards takes it back from the poller
// itself (wakeReply): a goroutine start and one epoll call on the next
// answer (about 15 µs after a pause), not a trip through the poller
// (about 60 µs). So it may park soon after each answer. Between the bursts
// of a login storm this leaves a session one goroutine for park_after,
// not two: goroutine descriptors are never given back, and the peak of a
// burst is what a process keeps.
const replyPark = 100 * time.Millisecond

// halfCloseGrace is how long the other direction may go on after one side
// ended its half of the connection.
const halfCloseGrace = 30 * time.Second

// relayResult counts what went each way.
type relayResult struct {
	up, down int64 // client->backend, backend->client
	err      error // the first error that was not a normal end
}

// relayOpts are what a relay needs besides its connections.
type relayOpts struct {
	idle time.Duration // no byte either way for this long ends the relay
	// park is how long a direction waits for its next burst before its
	// goroutine hands the source over to poller and exits; 0, or a nil
	// poller, never parks.
	park   time.Duration
	poller *poller
	// onEnd receives the result once both directions have ended, on the
	// goroutine of the last one; it owns the session's teardown.
	onEnd func(relayResult)
}

// relay copies bytes both ways until either side ends, in the five steps of
// the house style: flush what the protocol read ahead, unwrap to TCP so the
// kernel can splice, CloseWrite on EOF, a bounded grace for the other
// direction, and wait for both copies (the last one to end calls
// o.onEnd). The connections close on ctx.Done. No direction is idle while
// the other moves data.
//
// The caller's goroutine copies client to backend itself and returns
// when that direction ends or parks; the other direction has a goroutine
// of its own. A direction that has waited o.park for its next burst
// parks: its goroutine exits and o.poller watches its source, starting a
// new goroutine for it at the first readable byte (park.go). A session
// that is quiet both ways thus costs no goroutine and no buffer.
func relay(ctx context.Context, r *protocols.Relay, o relayOpts) {
	st, err := beginRelay(ctx, r, o)
	if err != nil {
		r.Client.Close()
		r.Backend.Conn.Close()
		o.onEnd(relayResult{err: err})
		return
	}
	st.dirs[0].pipe()
}

// beginRelay flushes what the protocol read ahead, ties the connections
// to ctx and starts the backend to client direction.
func beginRelay(ctx context.Context, r *protocols.Relay, o relayOpts) (*relayState, error) {
	client, back := r.Client, r.Backend.Conn
	if err := writeAll(back, r.ClientBuf, o.idle); err != nil {
		return nil, err
	}
	if err := writeAll(client, r.BackBuf, o.idle); err != nil {
		return nil, err
	}
	st := &relayState{idle: o.idle, onEnd: o.onEnd, ctx: ctx}
	if o.park > 0 && o.poller != nil {
		st.park, st.poller = o.park, o.poller
	}
	st.dirs[0].init(st, 0, back, client, len(r.ClientBuf))
	st.dirs[1].init(st, 1, client, back, len(r.BackBuf))
	// The session keeps the Backend for its whole life; its login reader
	// (4 KiB) was flushed into BackBuf and must not stay reachable.
	r.ClientBuf, r.BackBuf, r.Backend.Reader = nil, nil, nil
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		st.stop = a.AfterFunc(st.kill) // a session's context: no context of its own per call
	} else {
		st.stop = context.AfterFunc(ctx, st.kill)
	}
	go st.dirs[1].pipe()
	return st, nil
}

// kill closes both connections when the context ends; a parked direction
// is handed a goroutine first, which finds its connection closed and ends.
func (st *relayState) kill() {
	w := st.wake(true, 0, 1)
	st.dirs[0].src.Close()
	st.dirs[1].src.Close()
	w.start()
}

// end runs once both directions have ended: it adds up and hands over.
func (st *relayState) end() {
	st.stop()
	up, down := &st.dirs[0], &st.dirs[1]
	st.onEnd(relayResult{up: up.total, down: down.total, err: errors.Join(quiet(up.err), quiet(down.err))})
}

// ended counts a direction that has ended for good; the second one ends
// the relay.
func (st *relayState) ended(n int32) {
	if st.nEnded.Add(n) == 2 {
		st.end()
	}
}

// errIdle ends a relay that saw no traffic either way for the idle timeout.
var errIdle = errors.New("idle timeout")

// errStalled ends a relay whose write made no progress for the idle
// timeout: a peer that stopped reading (a client that never reads its
// FETCH) would otherwise hold the session and its backend forever.
var errStalled = errors.New("write stalled")

// stalled turns a write's deadline error into errStalled, which run must
// not mistake for a quiet read.
func stalled(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errStalled
	}
	return err
}

// relayState is what the two directions of one relay share.
//
// Idleness is decided between bursts: each wait for the first byte of a
// burst runs under a deadline of one idle period, and a direction whose
// period passed without a byte marks itself quiet; the first byte of a
// burst marks it busy again until its next wait runs out. The relay is
// idle only when both directions are quiet, so a long one-way transfer (a
// big FETCH, IDLE updates) keeps the silent side alive, and a dead
// session ends within two idle periods. With parking, a wait lasts only
// the park period; once both directions are parked, the poller's sweep
// (park.go) ends the relay when the rest of the idle period has passed.
type relayState struct {
	idle, park time.Duration
	flags      atomic.Uint32 // the relayFlags that are set
	nEnded     atomic.Int32

	dirs   [2]direction // client to backend, backend to client
	ctx    context.Context
	stop   func() bool // unties the connections from the context
	onEnd  func(relayResult)
	poller *poller // nil: never park

	// Guarded by poller.mu.
	dead       bool  // killed or ending: never park again
	nParked    uint8 // directions parked
	quietSince int64 // the last byte (Unix ns) as far as the parked directions tell
}

// relayFlag is one bit of relayState.flags: one word, where four
// atomic.Bools would take four each in every parked session.
type relayFlag uint32

const (
	// quiet0, shifted by a direction's index: its last wait ran out
	// with no byte.
	quiet0 relayFlag = 1 << iota
	quiet1
	halfClosed // one direction has ended
	// replyParked says, without poller.mu, whether dirs[1] may be
	// parked: set when it parks, cleared when it is taken back.
	replyParked
)

func quietFlag(dir uint8) relayFlag { return quiet0 << dir }

// is says whether f is set.
func (st *relayState) is(f relayFlag) bool { return relayFlag(st.flags.Load())&f != 0 }

// set sets f, or clears it when !on; it returns whether f was set.
func (st *relayState) set(f relayFlag, on bool) bool {
	if on {
		return relayFlag(st.flags.Or(uint32(f)))&f != 0
	}
	return relayFlag(st.flags.And(^uint32(f)))&f != 0
}

// direction is one way of a relay, owned by the goroutine that copies
// it; end reads it after that goroutine is done.
//
// A direction waits for the first byte of a burst holding nothing, takes
// a pooled buffer (the small one between TCP connections) only to read
// what has arrived and write it on, and gives it back before it waits
// again. A read that fills the buffer makes the rest of the burst bulk:
// between TCP connections on Linux it is spliced in the kernel through a
// pipe the direction creates for the burst and closes relayLinger after
// its last byte (two descriptors and, at 1 MiB, about 10 KiB of kernel
// memory while it lives); otherwise it is copied through the large
// buffer, given back after the same linger. An idle session costs its
// two sockets and, until it parks, two waiting goroutines.
//
// A parked session keeps its relay state, so it is kept small: the
// destination is the other direction's source, and the buffer pool
// follows from splice.
type direction struct {
	st     *relayState
	src    net.Conn
	w      waiter  // src's socket; with tcp, the wait for src to be readable and what it read
	total  int64   // bytes copied, the flushed read-ahead included
	err    error   // why the copy ended; nil at EOF
	token  uint64  // while parked: its key in poller.parked (guarded by poller.mu)
	dir    uint8   // index in st.dirs (0: client to backend); shifts quiet0
	tcp    bool    // src is TCP on Linux: it waits in the network poller (w), which reads
	splice bool    // src and dst are TCP on Linux: bulk is spliced
	ahead  bool    // src is TLS: a wait reads one byte, the rest of its record is at hand
	noPark bool    // the poller refused once: wait in the goroutine from now on
	first  [1]byte // the byte such a wait read
}

// init sets d up in place (its wait is a closure on d).
func (d *direction) init(st *relayState, dir uint8, dst, src net.Conn, flushed int) {
	*d = direction{st: st, dir: dir, src: src, total: int64(flushed)}
	_, tcp := dst.(*net.TCPConn)
	d.initWaiter()
	d.splice = d.tcp && tcp
	_, d.ahead = src.(*tls.Conn)
	if st.poller != nil && d.w.rc == nil {
		d.w.rc = rawConn(src)
	}
}

// mayPark says whether d parks after a wait that ran out.
func (d *direction) mayPark() bool { return d.st.poller != nil && d.w.rc != nil && !d.noPark }

// dst is where the direction writes: the other direction's source.
func (d *direction) dst() net.Conn { return d.st.dirs[1-d.dir].src }

// pool is where the direction takes its buffers: the small ones when
// bulk is spliced, the large ones otherwise.
func (d *direction) pool() *sync.Pool {
	if d.splice {
		return &smallPool
	}
	return &largePool
}

// rawConn returns the socket under c (TLS and a PROXY header unwrapped),
// or nil when c is not TCP.
func rawConn(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tc, ok := proxyproto.Unwrap(c).(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// deadline is the next read deadline: the idle timeout or, for a direction
// that may park, the park period if shorter; the bounded grace once the
// other direction has ended.
func (d *direction) deadline() time.Time {
	st := d.st
	if st.is(halfClosed) {
		return time.Now().Add(min(st.idle, halfCloseGrace))
	}
	if d.mayPark() {
		return time.Now().Add(d.parkPeriod())
	}
	return time.Now().Add(st.idle)
}

// parkPeriod is how long a wait of a direction that may park lasts.
func (d *direction) parkPeriod() time.Duration {
	p := min(d.st.idle, d.st.park)
	if d.dir == 1 {
		p = min(p, replyPark)
	}
	return p
}

// lingerDeadline is the read deadline inside a bulk burst: relayLinger
// from now, or the idle deadline if that comes first.
func (st *relayState) lingerDeadline(now time.Time) time.Time {
	d := now.Add(st.idle)
	if st.is(halfClosed) {
		d = now.Add(min(st.idle, halfCloseGrace))
	}
	if l := now.Add(relayLinger); l.Before(d) {
		return l
	}
	return d
}

// pipe copies src to dst until EOF, an error, or idleness, then
// half-closes dst and cuts the other direction's wait down to the grace;
// or it parks the direction and returns at once. A panic ends the
// relay, not the process: it is the top of the goroutine.
func (d *direction) pipe() {
	defer func() {
		if r := recover(); r != nil {
			d.err = &relayPanic{value: r, stack: debug.Stack()}
			d.finish()
			d.st.ended(1)
		}
	}()
	err := d.run()
	if err == errParked {
		return // d belongs to the poller now
	}
	d.err = err
	d.finish()
	d.st.ended(1)
}

// relayPanic is a panic in a relay goroutine, ending its session.
type relayPanic struct {
	value any
	stack []byte
}

func (p *relayPanic) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// errParked is run's way of saying the direction was handed to the poller.
var errParked = errors.New("parked")

// run copies burst after burst until EOF (nil), idleness, an error, or
// parking (errParked).
func (d *direction) run() error {
	st := d.st
	have := false // the first byte of a burst is in d.first already
	for {
		var err error
		if !have {
			d.src.SetReadDeadline(d.deadline())
			if d.tcp {
				err = d.w.wait() // called here, not in wait: one frame less under an idle session
			} else {
				err = d.wait()
			}
		}
		have = false
		if err == nil {
			err = d.burst()
		}
		switch {
		case err == nil:
		case err == io.EOF:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && !st.is(halfClosed):
			if d.mayPark() {
				if have, err = d.pending(); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				} else if have {
					continue
				}
				// A write deadline left set would keep a runtime timer
				// for the whole idle period: write sets its own.
				d.dst().SetWriteDeadline(time.Time{})
				if st.poller.park(d) {
					return errParked
				}
				d.noPark = true
				continue
			}
			st.set(quietFlag(d.dir), true)
			if !st.is(quietFlag(1-d.dir)) && !st.parked(1-d.dir) {
				continue // this side is quiet, the other is not (yet)
			}
			return errIdle
		default:
			return err
		}
	}
}

// pending says whether a TLS source holds something already (decrypted
// bytes, whole records, an alert read with the last record), which its
// socket's readiness would never announce: a read with a deadline in the
// past returns it without touching the socket. The byte it finds is the
// first of the next burst.
func (d *direction) pending() (bool, error) {
	if !d.ahead {
		return false, nil
	}
	d.src.SetReadDeadline(time.Unix(1, 0))
	n, err := d.src.Read(d.first[:])
	if n > 0 {
		return true, nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	return false, err
}

// wait waits for the first byte of a burst from a source that is not TCP
// (a TCP source waits in the network poller, d.w, and reads once there
// is something), holding no buffer: for TLS, in a one-byte read (TLS
// decrypts the whole record into its own buffer, where the rest of it
// waits). Any other source is not waited for: its burst blocks in a read
// with the large buffer, as everything did on systems without d.tcp.
func (d *direction) wait() error {
	if !d.ahead {
		return nil
	}
	for {
		n, err := d.src.Read(d.first[:])
		if n > 0 {
			return nil // an error comes again with the next read
		}
		if err != nil {
			return err
		}
	}
}

// burst moves what arrived after a wait through a pooled buffer, and the
// rest of the burst in bulk if that filled it.
func (d *direction) burst() error {
	bp, n, err := d.read()
	if bp == nil {
		return err
	}
	buf := *bp
	if n > 0 {
		if d.st.is(quietFlag(d.dir)) {
			d.st.set(quietFlag(d.dir), false)
		}
		if werr := d.write(buf[:n]); werr != nil {
			err = werr
		} else if d.dir == 0 && d.st.is(replyParked) {
			d.st.wakeReply()
		}
	}
	bulk := err == nil && n == len(buf)
	if bulk && !d.splice {
		err = d.copyBulk(buf)
	}
	d.pool().Put(bp)
	if bulk && d.splice {
		if err = d.spliceBulk(); err == errNoPipe {
			err = d.copyBulkPooled()
		}
	}
	return err
}

// errNoPipe is spliceBulk's way of saying it moved nothing and could
// not splice (no pipe to be had): the burst goes through a buffer.
var errNoPipe = errors.New("no splice pipe")

func (d *direction) copyBulkPooled() error {
	bp := largePool.Get().(*[]byte)
	defer largePool.Put(bp)
	return d.copyBulk(*bp)
}

// read returns a pooled buffer with what the wait found, reading without
// waiting for more unless the source has no wait of its own. A nil
// buffer comes with an error.
func (d *direction) read() (*[]byte, int, error) {
	if d.tcp {
		return d.w.take() // the wait has read already
	}
	bp := d.pool().Get().(*[]byte)
	buf := *bp
	if !d.ahead {
		n, err := d.src.Read(buf)
		return bp, n, err
	}
	// What TLS has decrypted or received whole is read with a deadline
	// in the past, which never touches the socket: no read blocks while
	// holding bytes that dst has not been sent.
	buf[0] = d.first[0]
	n := 1
	d.src.SetReadDeadline(time.Unix(1, 0))
	for n < len(buf) {
		k, err := d.src.Read(buf[n:])
		n += k
		if errors.Is(err, os.ErrDeadlineExceeded) || (k == 0 && err == nil) {
			break
		}
		if err != nil {
			return bp, n, err
		}
	}
	return bp, n, nil
}

// copyBulk copies the rest of a bulk burst through buf until the source
// pauses for relayLinger, ends or fails.
func (d *direction) copyBulk(buf []byte) error {
	var renew time.Time
	for {
		if now := time.Now(); now.After(renew) {
			d.src.SetReadDeadline(d.st.lingerDeadline(now))
			renew = now.Add(relayLinger / 4)
		}
		n, err := d.src.Read(buf)
		if n > 0 {
			if werr := d.write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil // the burst is over: wait for the next one
		}
		if err != nil {
			return err
		}
	}
}

// write sends b on and counts what went, failing when dst takes nothing
// for the idle timeout.
func (d *direction) write(b []byte) error {
	dst := d.dst()
	dst.SetWriteDeadline(time.Now().Add(d.st.idle))
	n, err := dst.Write(b)
	d.total += int64(n)
	return stalled(err)
}

// finish half-closes dst after EOF, the first direction to end, and
// closes both connections otherwise. The other direction, if parked, is
// given its goroutine back: for the grace, or to find the end.
func (d *direction) finish() {
	st := d.st
	first := !st.set(halfClosed, true)
	w := st.wake(false, 1-d.dir, 1-d.dir)
	if cw, ok := d.dst().(interface{ CloseWrite() error }); ok && d.err == nil && first {
		cw.CloseWrite()
		// Wake the other direction so it picks up the grace deadline.
		d.dst().SetReadDeadline(time.Now().Add(halfCloseGrace))
	} else {
		if tc, ok := d.dst().(*tls.Conn); ok && errors.Is(d.err, errStalled) {
			// Its peer reads nothing: the close_notify that Close
			// sends would wait five seconds for room.
			tc.NetConn().Close()
		}
		d.dst().Close()
		d.src.Close()
	}
	w.start()
}

// The pools hold buffers only between bursts: a direction takes one when
// bytes have arrived and gives it back before it waits again.
var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

func writeAll(c net.Conn, b []byte, idle time.Duration) error {
	if len(b) == 0 {
		return nil
	}
	c.SetWriteDeadline(time.Now().Add(idle))
	_, err := c.Write(b)
	return stalled(err)
}

// quiet drops the errors that are a normal way for a relay to end.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
