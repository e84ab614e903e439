package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/protocols"
)

// relayChunk bounds one copy so the idle clock can be advanced while a
// long transfer runs; big enough that the syscall overhead is noise.
const relayChunk = 1 << 20

// relayLinger is how long a direction keeps its splice pipe after its
// last byte: long enough that a transfer never gives it up between two
// segments, short enough that idle sessions hold none.
const relayLinger = time.Second

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
	if err := writeAll(back, r.ClientBuf); err != nil {
		return nil, err
	}
	if err := writeAll(client, r.BackBuf); err != nil {
		return nil, err
	}
	st := &relayState{idle: idle}
	st.dirs[0] = direction{st: st, dir: 0, dst: back, src: client, w: newWaiter(back, client), total: int64(len(r.ClientBuf))}
	st.dirs[1] = direction{st: st, dir: 1, dst: client, src: back, w: newWaiter(client, back), total: int64(len(r.BackBuf))}
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

// relayState is what the two directions of one relay share.
//
// Splicing hides progress until a chunk ends, so idleness is decided at
// chunk ends: each read runs under a deadline of one idle period, and a
// direction whose period passed without a byte marks itself quiet. The
// relay is idle only when both directions are quiet, so a long one-way
// transfer (a big FETCH, IDLE updates) keeps the silent side alive, and a
// dead session ends within two idle periods.
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
// Between TCP connections on Linux a direction has two phases. Active, it
// splices chunk after chunk, holding a pipe (two descriptors and, at Go's
// 1 MiB pipe size, about 16 KiB of kernel memory) from the moment a
// splice starts until its chunk is full. After relayLinger without a byte
// it gives the pipe back and waits for the next byte holding nothing, so
// an idle session costs its two sockets and two parked goroutines only.
type direction struct {
	st       *relayState
	dir      int // index in st.quiet
	dst, src net.Conn
	lr       io.LimitedReader
	w        *waiter // nil unless the kernel can splice src to dst
	active   bool    // splicing, holding a pipe since the last byte
	total    int64   // bytes copied, the flushed read-ahead included
	err      error   // why the copy ended; nil at EOF
}

// deadline is the next read deadline: the idle timeout, or the bounded
// grace once the other direction has ended.
func (st *relayState) deadline() time.Time {
	if st.halfClosed.Load() {
		return time.Now().Add(min(st.idle, halfCloseGrace))
	}
	return time.Now().Add(st.idle)
}

// pipe copies src to dst until EOF, an error, or idleness, then
// half-closes dst and cuts the other direction's wait down to the grace.
func (d *direction) pipe() {
	d.err = d.run()
	d.finish()
}

// run copies until EOF (nil), idleness or an error.
func (d *direction) run() error {
	st := d.st
	for {
		var n int64
		var err error
		if d.w != nil && !d.active {
			d.src.SetReadDeadline(st.deadline())
			err = d.w.wait()
			d.active = err == nil
		} else {
			var eof bool
			if n, eof, err = d.chunk(); eof {
				return nil
			}
		}
		if n > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			st.quiet[d.dir].Store(n == 0)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !st.halfClosed.Load() {
			if !st.quiet[0].Load() || !st.quiet[1].Load() {
				continue // this side is quiet, the other is not (yet)
			}
			return errIdle
		}
		if err != nil {
			return err
		}
	}
}

// chunk copies one chunk; eof means the source ended. An active splice
// that lingered without a byte turns back to waiting.
func (d *direction) chunk() (n int64, eof bool, err error) {
	deadline := d.st.deadline()
	if l := time.Now().Add(relayLinger); d.w != nil && l.Before(deadline) {
		deadline = l
	}
	d.src.SetReadDeadline(deadline)
	d.lr.R, d.lr.N = d.src, relayChunk
	n, err = copyChunk(d.dst, &d.lr)
	d.total += n
	if err == nil && d.lr.N > 0 {
		return n, true, nil // the chunk ended before its limit
	}
	if d.w != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		d.active, err = false, nil
	}
	return n, false, err
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

// copyChunk moves one chunk. When dst is a *net.TCPConn and src a TCP
// connection under the LimitedReader, ReadFrom splices in the kernel.
func copyChunk(dst net.Conn, lr *io.LimitedReader) (int64, error) {
	if rf, ok := dst.(io.ReaderFrom); ok {
		if _, tcp := lr.R.(*net.TCPConn); tcp {
			return rf.ReadFrom(lr)
		}
	}
	return copyBuffered(dst, lr)
}

// copyBuffered moves one chunk through a pooled buffer, for what ReadFrom
// cannot take (TLS on either side). While it waits for the first byte it
// holds the buffer: an idle TLS session keeps 16 KiB per direction here.
func copyBuffered(dst net.Conn, lr *io.LimitedReader) (int64, error) {
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	return io.CopyBuffer(onlyWriter{dst}, lr, *bufp)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// onlyWriter hides ReadFrom so CopyBuffer uses the pooled buffer.
type onlyWriter struct{ io.Writer }

func writeAll(w io.Writer, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, err := w.Write(b)
	return err
}

// quiet drops the errors that are a normal way for a relay to end.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
