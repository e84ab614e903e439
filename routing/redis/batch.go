package redis

import (
	"context"
	"errors"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Acquires are sent through one goroutine that pipelines whatever has
// queued while the previous batch was on the wire (group commit): with one
// login at a time that is one command per round trip, as before, and
// under load many logins share a round trip and its system calls, which
// is what a store call costs most on a busy machine. Nothing waits for a
// batch to fill.

// acqReq is one acquire script call waiting for its batch.
type acqReq struct {
	keys []string
	args []any
	res  []any
	err  error
	done chan struct{}
}

// errStopped answers acquires after Run has ended.
var errStopped = errors.New("redis store stopped")

// errNoAnswer is a pipeline that came back short.
var errNoAnswer = errors.New("redis pipeline: answers missing")

// maxBatch bounds one pipeline.
const maxBatch = 128

// runAcquire runs the acquire script through the batcher and waits for its
// answer. It does not give up when the caller's ctx ends: the script may
// have run, and its answer must be seen (the caller releases what it got).
func (s *Store) runAcquire(keys []string, args []any) ([]any, error) {
	r := &acqReq{keys: keys, args: args, done: make(chan struct{})}
	select {
	case s.acqQ <- r:
	case <-s.acqDone:
		return nil, errStopped
	}
	select {
	case <-r.done:
		return r.res, r.err
	case <-s.acqDone:
		select {
		case <-r.done:
			return r.res, r.err
		default:
			return nil, errStopped // queued after the batcher's last look
		}
	}
}

// sendAcquires is the batcher; it runs until ctx ends, then fails
// whatever is left.
func (s *Store) sendAcquires(ctx context.Context) {
	batch := make([]*acqReq, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			s.failAcquires(ctx.Err())
			return
		case r := <-s.acqQ:
			batch = append(batch[:0], r)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-s.acqQ:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.sendBatch(context.WithoutCancel(ctx), batch)
	}
}

// failAcquires answers queued requests after the batcher stopped, and from
// then on: a Store whose Run ended decides no more.
func (s *Store) failAcquires(err error) {
	close(s.acqDone)
	for {
		select {
		case r := <-s.acqQ:
			r.err = err
			close(r.done)
		default:
			return
		}
	}
}

func (s *Store) sendBatch(ctx context.Context, batch []*acqReq) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	cmds := s.pipeAcquire(ctx, batch)
	if _, err := s.retryNoScript(ctx, batch, cmds); err != nil {
		s.obs.Call("acquire", time.Since(start), err)
		s.setDown(err)
		for _, r := range batch {
			r.err = err
			close(r.done)
		}
		return
	}
	var failed error
	for i, r := range batch {
		r.res, r.err = cmds[i].(*goredis.Cmd).Slice()
		if r.err != nil {
			failed = r.err
		}
		close(r.done)
	}
	s.obs.Call("acquire", time.Since(start), failed)
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
