package redis

import (
	"context"
	"errors"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// Acquires are pipelined by group commit: the caller that finds nobody
// sending becomes the leader and sends, itself, its own call together with
// whatever others queued meanwhile; when its batch is answered, it hands
// the turn to the first caller that queued since. With one login at a time
// that is one command per round trip and no hand-off between goroutines;
// under load many logins share a round trip and its system calls, which is
// what a store call costs most on a busy machine. Nothing waits for a
// batch to fill.

// acqReq is one acquire script call waiting for its batch.
type acqReq struct {
	keys []string
	args []any
	res  []any
	err  error
	// wake carries, in this order, at most two signals: false, this
	// caller leads the next batch (only while it waits in the queue);
	// true, answered (res and err are set; only once it is in a batch,
	// which a caller is in after it leads or while another leads).
	wake chan bool
}

// batcher is the queue of acquires. Guarded by mu.
type batcher struct {
	mu      sync.Mutex
	q       []*acqReq
	sending bool // a leader is sending
}

// errNoAnswer is a pipeline that came back short.
var errNoAnswer = errors.New("redis pipeline: answers missing")

// maxBatch bounds one pipeline.
const maxBatch = 128

// runAcquire runs the acquire script in the next batch and waits for its
// answer. It does not give up when the caller's context ends: the script
// may have run, and its answer must be seen (the caller releases what it
// got). The store's timeout bounds the wait.
func (s *Store) runAcquire(keys []string, args []any) ([]any, error) {
	r := &acqReq{keys: keys, args: args, wake: make(chan bool, 1)}
	b := &s.acq
	b.mu.Lock()
	b.q = append(b.q, r)
	lead := !b.sending
	b.sending = true
	b.mu.Unlock()
	if !lead && <-r.wake {
		return r.res, r.err
	}
	b.mu.Lock()
	n := min(len(b.q), maxBatch)
	batch := append([]*acqReq(nil), b.q[:n]...)
	if n == len(b.q) {
		clear(b.q)
		b.q = b.q[:0] // its array again for the next queue
	} else {
		b.q = b.q[n:]
	}
	b.mu.Unlock()
	s.sendBatch(context.Background(), batch)
	b.mu.Lock()
	if len(b.q) > 0 {
		b.q[0].wake <- false
	} else {
		b.sending = false
	}
	b.mu.Unlock()
	<-r.wake // answered: a leader is first in the queue, so in its own batch
	return r.res, r.err
}

func (s *Store) sendBatch(ctx context.Context, batch []*acqReq) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	cmds := s.pipeAcquire(ctx, batch)
	if _, err := s.retryNoScript(ctx, batch, cmds); err != nil {
		s.setDown(err)
		for _, r := range batch {
			r.err = err
			r.wake <- true
		}
		return
	}
	// Each acquire reports its own latency (Table.Acquire): the wait for
	// the batch is part of what a login waits for.
	for i, r := range batch {
		r.res, r.err = cmds[i].(*goredis.Cmd).Slice()
		r.wake <- true
	}
}

func (s *Store) pipeAcquire(ctx context.Context, batch []*acqReq) []goredis.Cmder {
	pipe := s.c.Pipeline()
	for _, r := range batch {
		acquireScript.EvalSha(ctx, pipe, r.keys, r.args...)
	}
	cmds, _ := pipe.Exec(ctx) // errors are per command
	return cmds
}

// retryNoScript sends again, one by one with the script's text, the
// commands the store refused for not knowing the script (it restarted):
// those did not run. A failure of the connection itself is returned.
func (s *Store) retryNoScript(ctx context.Context, batch []*acqReq, cmds []goredis.Cmder) ([]goredis.Cmder, error) {
	if len(cmds) != len(batch) {
		return nil, errNoAnswer
	}
	for i, c := range cmds {
		err := c.Err()
		switch {
		case err == nil:
		case goredis.HasErrorPrefix(err, "NOSCRIPT"):
			cmds[i] = acquireScript.Run(ctx, s.c, batch[i].keys, batch[i].args...)
		case isConnError(err):
			return nil, err
		}
	}
	return cmds, nil
}

// isConnError tells a failed connection (the store is down) from an
// error the store answered.
func isConnError(err error) bool {
	var re goredis.Error
	return !errors.As(err, &re)
}
