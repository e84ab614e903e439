package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/protocols"
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

// halfCloseGrace is how long the other direction may go on after one side
// ended its half of the connection.
const halfCloseGrace = 30 * time.Second

// relayResult counts what went each way.
type relayResult struct {
	up, down int64 // client->backend, backend->client
	err      error // the first error that was not a normal end
}

// relay copies bytes both ways until either side ends, in the five steps of
// the house style: flush what the protocol read ahead, unwrap to TCP so the
// kernel can splice, CloseWrite on EOF, a bounded grace for the other
// direction, and wait for both copies. The connection closes on ctx.Done.
// No direction is idle while the other moves data.
//
// The session goroutine copies client to backend itself. An idle session
// is two goroutines parked in the network poller, and the one under
// serveSession has its stack shrunk to 4 KiB only while it uses less
// than a quarter of it (plus 800 bytes): so the frames between relay and
// that wait are kept few and small.
func relay(ctx context.Context, r *protocols.Relay, idle time.Duration) relayResult {
	st, err := beginRelay(ctx, r, idle)
	if err != nil {
		return relayResult{err: err}
	}
	st.dirs[0].pipe()
	return st.end()
}

// beginRelay flushes what the protocol read ahead, ties the connections
// to ctx and starts the backend to client direction.
func beginRelay(ctx context.Context, r *protocols.Relay, idle time.Duration) (*relayState, error) {
	client, back := r.Client, r.Backend.Conn
	if err := writeAll(back, r.ClientBuf, idle); err != nil {
		return nil, err
	}
	if err := writeAll(client, r.BackBuf, idle); err != nil {
		return nil, err
	}
	st := &relayState{idle: idle}
	st.dirs[0] = newDirection(st, 0, back, client, len(r.ClientBuf))
	st.dirs[1] = newDirection(st, 1, client, back, len(r.BackBuf))
	// The session keeps the Backend for its whole life; its login reader
	// (4 KiB) was flushed into BackBuf and must not stay reachable.
	r.ClientBuf, r.BackBuf, r.Backend.Reader = nil, nil, nil
	st.stop = context.AfterFunc(ctx, func() {
		client.Close()
		back.Close()
	})
	st.wg.Add(1)
	go st.down()
	return st, nil
}

func (st *relayState) down() {
	defer st.wg.Done()
	st.dirs[1].pipe()
}

// end waits for the backend to client direction and adds up.
func (st *relayState) end() relayResult {
	st.wg.Wait()
	st.stop()
	up, down := &st.dirs[0], &st.dirs[1]
	return relayResult{up: up.total, down: down.total, err: errors.Join(quiet(up.err), quiet(down.err))}
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
// session ends within two idle periods.
type relayState struct {
	idle       time.Duration
	quiet      [2]atomic.Bool
	halfClosed atomic.Bool // one direction has ended

	dirs [2]direction // client to backend, backend to client
	stop func() bool  // unties the connections from the context
	wg   sync.WaitGroup
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
// two sockets and two parked goroutines only.
type direction struct {
	st       *relayState
	dir      int // index in st.quiet
	dst, src net.Conn
	w        *waiter    // waits for src to be readable, then reads; nil unless src is TCP on Linux
	splice   bool       // src and dst are TCP on Linux: bulk is spliced
	pool     *sync.Pool // smallPool when splicing, largePool otherwise
	ahead    bool       // src is TLS: a wait reads one byte, the rest of its record is at hand
	first    [1]byte    // the byte such a wait read
	total    int64      // bytes copied, the flushed read-ahead included
	err      error      // why the copy ended; nil at EOF
}

func newDirection(st *relayState, dir int, dst, src net.Conn, flushed int) direction {
	d := direction{st: st, dir: dir, dst: dst, src: src, pool: &largePool, total: int64(flushed)}
	_, tcp := dst.(*net.TCPConn)
	d.w = newWaiter(src)
	if d.splice = d.w != nil && tcp; d.splice {
		d.pool = &smallPool
	}
	if d.w != nil {
		d.w.pool = d.pool
	}
	_, d.ahead = src.(*tls.Conn)
	return d
}

// deadline is the next read deadline: the idle timeout, or the bounded
// grace once the other direction has ended.
func (st *relayState) deadline() time.Time {
	if st.halfClosed.Load() {
		return time.Now().Add(min(st.idle, halfCloseGrace))
	}
	return time.Now().Add(st.idle)
}

// lingerDeadline is the read deadline inside a bulk burst: relayLinger
// from now, or the idle deadline if that comes first.
func (st *relayState) lingerDeadline(now time.Time) time.Time {
	if d, l := st.deadline(), now.Add(relayLinger); d.Before(l) {
		return d
	}
	return now.Add(relayLinger)
}

// pipe copies src to dst until EOF, an error, or idleness, then
// half-closes dst and cuts the other direction's wait down to the grace.
func (d *direction) pipe() {
	d.err = d.run()
	d.finish()
}

// run copies burst after burst until EOF (nil), idleness or an error.
func (d *direction) run() error {
	st := d.st
	for {
		d.src.SetReadDeadline(st.deadline())
		var err error
		if d.w != nil {
			err = d.w.wait() // called here, not in wait: one frame less under an idle session
		} else {
			err = d.wait()
		}
		if err == nil {
			err = d.burst()
		}
		switch {
		case err == nil:
		case err == io.EOF:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && !st.halfClosed.Load():
			st.quiet[d.dir].Store(true)
			if !st.quiet[1-d.dir].Load() {
				continue // this side is quiet, the other is not (yet)
			}
			return errIdle
		default:
			return err
		}
	}
}

// wait waits for the first byte of a burst from a source that is not TCP
// (a TCP source waits in the network poller, d.w, and reads once there
// is something), holding no buffer: for TLS, in a one-byte read (TLS
// decrypts the whole record into its own buffer, where the rest of it
// waits). Any other source is not waited for: its burst blocks in a read
// with the large buffer, as everything did on systems without d.w.
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
		d.st.quiet[d.dir].Store(false)
		if werr := d.write(buf[:n]); werr != nil {
			err = werr
		}
	}
	bulk := err == nil && n == len(buf)
	if bulk && !d.splice {
		err = d.copyBulk(buf)
	}
	d.pool.Put(bp)
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
	if d.w != nil {
		return d.w.take() // the wait has read already
	}
	bp := d.pool.Get().(*[]byte)
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
	d.dst.SetWriteDeadline(time.Now().Add(d.st.idle))
	n, err := d.dst.Write(b)
	d.total += int64(n)
	return stalled(err)
}

// finish half-closes dst after EOF, the first direction to end, and
// closes both connections otherwise.
func (d *direction) finish() {
	first := !d.st.halfClosed.Swap(true)
	if cw, ok := d.dst.(interface{ CloseWrite() error }); ok && d.err == nil && first {
		cw.CloseWrite()
		// Wake the other direction so it picks up the grace deadline.
		d.dst.SetReadDeadline(time.Now().Add(halfCloseGrace))
	} else {
		d.dst.Close()
		d.src.Close()
	}
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
