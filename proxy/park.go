package proxy

import (
	"runtime/debug"
	"sync"
	"time"
)

// poller watches the sockets of parked relay directions, one for a whole
// server. A direction that has waited the park period for its next burst
// registers its source with the poller and its goroutine exits; the first
// readable byte (or the end, or an error) takes it out again and starts a
// new goroutine for it, which reads what is there as any wait would. A
// parked direction holds no goroutine, no stack and no buffer: only its
// entry here and the relay state it already had.
//
// The wait itself is the operating system's (park_linux.go: one epoll
// instance whose descriptor sits in Go's own network poller, so no
// thread is blocked for it). Taking a direction back is always done
// under mu, by whoever comes first: the readable socket, the relay's
// context (kick, shutdown), the other direction ending, or the sweep
// that ends relays parked both ways for the rest of their idle period.
// The sweep runs every tick from the poller's goroutine: a timer per
// session would cost more memory than the rest of its relay state.
type poller struct {
	mu     sync.Mutex
	parked map[uint64]*direction // by token, which is never reused
	next   uint64                // the last token handed out
	closed bool
	parks  int           // client sides parked since the last tick (releaseMemory)
	tick   time.Duration // between sweeps
	sys    pollerSys

	// Owned by the poller's goroutine: see releaseMemory.
	unreleased int       // directions parked since memory was last released
	released   time.Time // when it was
}

// Giving memory back: a burst of logins leaves the stacks of the
// goroutines that ran them, and their garbage, on the heap until the next
// collection, which a proxy whose sessions are all parked may not run for
// minutes; the process keeps that memory (RSS) meanwhile. Once parking
// has settled (a tick without a new park) after at least releaseMin
// directions parked, the poller has the runtime collect and return what is
// free to the operating system, at most every releaseEvery. Only client
// sides count: their goroutine is the session's own, which ran the login
// (the deep stack), and parks park_after after the burst; the backend
// sides park within replyPark of it, and a release after them alone would
// come too early and hold back the one that matters for releaseEvery.
const (
	releaseMin   = 128
	releaseEvery = 30 * time.Second
)

// releaseMemory is called every tick with the directions parked in it.
func (p *poller) releaseMemory(parked int, now time.Time) {
	p.unreleased += parked
	if parked > 0 || p.unreleased < releaseMin || now.Sub(p.released) < releaseEvery {
		return
	}
	p.unreleased, p.released = 0, now
	go debug.FreeOSMemory() // a collection: not on the goroutine that resumes sessions
}

// sweepTick is how often a poller looks for relays that reached their idle
// timeout while parked: a sixteenth of the timeout, within bounds, so that
// a relay ends at most that late.
func sweepTick(idle time.Duration) time.Duration {
	return min(max(idle/16, 10*time.Millisecond), time.Second)
}

// park hands d to the poller; false if it cannot (the relay is ending or
// half-closed, the poller closed, the socket gone), and d's goroutine
// waits on. Once it returns true d belongs to the poller, and the caller
// must not touch it.
func (p *poller) park(d *direction) bool {
	st := d.st
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || st.dead || st.is(halfClosed) || st.ctx.Err() != nil {
		return false
	}
	p.next++
	if err := p.watch(d.w.rc, p.next); err != nil {
		return false
	}
	d.token = p.next
	p.parked[d.token] = d
	if d.dir == 0 {
		p.parks++
	} else {
		st.set(replyParked, true)
	}
	// d has been quiet since it began the wait that ran out; once both
	// ways are parked, the later of the two is the relay's last byte.
	st.nParked++
	if at := time.Now().UnixNano() - int64(d.parkPeriod()); at > st.quietSince {
		st.quietSince = at
	}
	return true
}

// unparkLocked takes d out of the poller. Its socket may stay registered
// with the operating system (one-shot, so it reports at most once more,
// under a token nobody has any longer).
func (p *poller) unparkLocked(d *direction) {
	delete(p.parked, d.token)
	d.token = 0
	st := d.st
	if d.dir == 1 {
		st.set(replyParked, false)
	}
	st.nParked--
	st.quietSince = 0 // the other way, if parked, was quiet before this one woke
}

// ready is called by the OS part for a token whose socket is readable.
// The other direction of the relay resumes with it: a command is
// followed by its reply, which then finds a goroutine waiting in Go's
// network poller instead of a second trip through this one (half the
// latency parking adds to a first reply).
func (p *poller) ready(token uint64) {
	var w woken
	p.mu.Lock()
	if d := p.parked[token]; d != nil {
		for i := range d.st.dirs {
			if o := &d.st.dirs[i]; o.token != 0 {
				p.unparkLocked(o)
				w[i] = o
			}
		}
	}
	p.mu.Unlock()
	w.start()
}

// close stops watching; directions still parked stay in parked until
// their relay's context or timer takes them out.
func (p *poller) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.sys.close()
}

// count says how many relay directions are parked now.
func (p *poller) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

// woken are the directions a wake took back from the poller; start gives
// each a goroutine.
type woken [2]*direction

func (w woken) start() {
	for _, d := range w {
		if d != nil {
			go d.pipe()
		}
	}
}

// wake takes directions i (and j, if not the same) back from the poller if
// they are parked; dead keeps the relay from parking again.
func (st *relayState) wake(dead bool, i, j uint8) woken {
	var w woken
	p := st.poller
	if p == nil {
		return w
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st.dead = st.dead || dead
	for _, k := range [2]uint8{i, j} {
		if d := &st.dirs[k]; d.token != 0 {
			p.unparkLocked(d)
			w[k] = d
		}
	}
	return w
}

// wakeReply takes the backend to client direction back from the poller
// for the answer to what the client to backend direction just forwarded,
// and stops its socket's readiness report, which would otherwise wake
// the poller for nothing when the answer comes.
func (st *relayState) wakeReply() {
	p := st.poller
	d := &st.dirs[1]
	p.mu.Lock()
	if d.token == 0 {
		p.mu.Unlock()
		return
	}
	p.unparkLocked(d)
	p.mu.Unlock()
	p.unwatch(d.w.rc)
	go d.pipe()
}

// parked says whether direction i is parked now.
func (st *relayState) parked(i uint8) bool {
	if st.poller == nil {
		return false
	}
	st.poller.mu.Lock()
	defer st.poller.mu.Unlock()
	return st.dirs[i].token != 0
}

// sweep ends the relays that have been parked both ways for the rest of
// their idle period.
func (p *poller) sweep() {
	now := time.Now().UnixNano()
	var expired []*relayState
	p.mu.Lock()
	parks := p.parks
	p.parks = 0
	for _, d := range p.parked {
		st := d.st
		if d.dir == 0 && st.nParked == 2 && now-st.quietSince >= int64(st.idle) {
			p.unparkLocked(&st.dirs[0])
			p.unparkLocked(&st.dirs[1])
			st.dead = true
			expired = append(expired, st)
		}
	}
	p.mu.Unlock()
	p.releaseMemory(parks, time.Unix(0, now))
	for _, st := range expired {
		st.dirs[0].err = errIdle
		st.dirs[0].src.Close()
		st.dirs[1].src.Close()
		st.ended(2)
	}
}
