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

// relayChunk bounds one splice call so the idle clock can be advanced while
// a long transfer runs; big enough that the syscall overhead is noise.
const relayChunk = 1 << 20

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
func relay(ctx context.Context, r *protocols.Relay, idle time.Duration) relayResult {
	var res relayResult
	client, back := r.Client, r.Backend.Conn
	if err := writeAll(back, r.ClientBuf); err != nil {
		return relayResult{err: err}
	}
	if err := writeAll(client, r.BackBuf); err != nil {
		return relayResult{err: err}
	}
	res.up, res.down = int64(len(r.ClientBuf)), int64(len(r.BackBuf))
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		back.Close()
	})
	defer stop()

	st := &relayState{idle: idle}
	var wg sync.WaitGroup
	var downErr error
	var up, down int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		down, downErr = st.pipe(1, client, back)
	}()
	up, upErr := st.pipe(0, back, client)
	wg.Wait()
	res.up += up
	res.down += down
	res.err = errors.Join(quiet(upErr), quiet(downErr))
	return res
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
// dir (0 or 1) names the direction in st.quiet.
func (st *relayState) pipe(dir int, dst, src net.Conn) (int64, error) {
	var total int64
	lr := &io.LimitedReader{}
	var err error
	for {
		src.SetReadDeadline(st.deadline())
		lr.R, lr.N = src, relayChunk
		var n int64
		n, err = copyChunk(dst, lr)
		total += n
		st.quiet[dir].Store(n == 0)
		if err == nil && lr.N > 0 {
			break // EOF: the chunk ended before its limit
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !st.halfClosed.Load() {
			if !st.quiet[0].Load() || !st.quiet[1].Load() {
				err = nil // this side is quiet, the other is not (yet)
				continue
			}
			err = errIdle
		}
		if err != nil {
			break
		}
	}
	first := !st.halfClosed.Swap(true)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil && first {
		cw.CloseWrite()
		// Wake the other direction so it picks up the grace deadline.
		dst.SetReadDeadline(time.Now().Add(halfCloseGrace))
	} else {
		dst.Close()
		src.Close()
	}
	return total, err
}

// copyChunk moves one chunk. When dst is a *net.TCPConn and src a TCP
// connection under the LimitedReader, ReadFrom splices in the kernel.
func copyChunk(dst net.Conn, lr *io.LimitedReader) (int64, error) {
	if rf, ok := dst.(io.ReaderFrom); ok {
		if _, tcp := lr.R.(*net.TCPConn); tcp {
			return rf.ReadFrom(lr)
		}
	}
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
