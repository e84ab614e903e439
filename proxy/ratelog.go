package proxy

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogEvery is the most often a refused connection is logged: under
// a connection flood a line per refusal would flood the log.
const refusalLogEvery = time.Second

// rateLog lets one line through per period and counts the ones it held
// back, which the next line reports as "suppressed". The zero value is
// ready to use.
type rateLog struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

// warn logs msg with args, or counts it when a line went out less than
// refusalLogEvery ago.
func (r *rateLog) warn(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	r.mu.Lock()
	if now.Before(r.next) {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.next = now.Add(refusalLogEvery)
	n := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
