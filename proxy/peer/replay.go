package peer

import (
	"errors"
	"fmt"
	"time"
)

// Errors of the replay guard. Like Decode's, each means the datagram is
// ignored.
var (
	ErrOwnNode = errors.New("heartbeat carries our own node name (is peer.address this instance, or do both nodes have one name?)")
	ErrReplay  = errors.New("heartbeat replayed or out of order")
	ErrStale   = errors.New("heartbeat too old or from the future (clocks apart?)")
	// errDuplicate is a heartbeat already taken, or one just before it:
	// the copy that took the other path. It is dropped without a word.
	errDuplicate = errors.New("heartbeat already received by the other path")
)

// dupWindow is how far behind the newest heartbeat a copy on the other
// path may arrive and still count as a copy rather than a replay.
const dupWindow = 16

// guard refuses authentic heartbeats that must not count: our own name
// (reflected back to us), replays and reorderings within a sender's epoch,
// and anything sent too far from our clock. The sequence check alone
// stops replays while the guard remembers a sender; the clock window bounds
// what a replay can do after our own restart, when it remembers nothing.
type guard struct {
	self    string
	maxSkew time.Duration
	// forget is how long a sender must be silent before a lower epoch is
	// believed: a peer that restarted after its clock stepped back.
	forget time.Duration
	paths  int // heartbeat paths: with two, every heartbeat comes twice
	last   map[string]seen
}

type seen struct {
	epoch int64
	seq   uint64
	at    time.Time // our clock when accepted
}

func newGuard(self string, maxSkew, forget time.Duration) *guard {
	return &guard{self: self, maxSkew: maxSkew, forget: forget, last: map[string]seen{}}
}

// check accepts m at now, or says why not. An accepted m is remembered.
func (g *guard) check(m *Message, now time.Time) error {
	if m.Node == g.self {
		return ErrOwnNode
	}
	if d := now.Sub(m.Sent); d > g.maxSkew || d < -g.maxSkew {
		return fmt.Errorf("%w: sent %v from our clock, more than %v", ErrStale, d.Round(time.Millisecond), g.maxSkew)
	}
	if last, ok := g.last[m.Node]; ok {
		switch {
		case m.Epoch > last.epoch: // the sender restarted
		case m.Epoch == last.epoch && m.Seq > last.seq:
		case m.Epoch < last.epoch && now.Sub(last.at) > g.forget:
		case g.paths > 1 && m.Epoch == last.epoch && m.Seq <= last.seq && last.seq-m.Seq < dupWindow:
			return errDuplicate
		default:
			return fmt.Errorf("%w: epoch %d seq %d, after epoch %d seq %d", ErrReplay, m.Epoch, m.Seq, last.epoch, last.seq)
		}
	}
	g.last[m.Node] = seen{epoch: m.Epoch, seq: m.Seq, at: now}
	return nil
}
