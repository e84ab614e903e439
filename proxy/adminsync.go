package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/routing"
)

// AdminSync keeps the runtime admin state (drains, weights, pins) of the
// two nodes of an active/standby pair in step when the state lives in
// memory and [store] state_file (a Redis store is shared already): every
// admin change made here is sent to the peer with the heartbeats, and the
// peer's state replaces ours when it changed later (routing.AdminState.
// Updated). So a node that restarts with an old file takes the peer's
// newer state, and the peer ignores the old one. Kicks travel too and are
// carried out once. Its methods are safe for concurrent use.
type AdminSync struct {
	s     *Server
	log   *slog.Logger
	share func([]byte) bool // to the peer; nil without one

	payload atomic.Pointer[[]byte] // the state in force as the peer gets it

	mu       sync.Mutex
	lastKick time.Time // of the last kick taken from the peer
}

// adminMessage is what travels to the peer: the whole state, and a kick
// when one was just made.
type adminMessage struct {
	State routing.AdminState `json:"state"`
	Kick  *adminKick         `json:"kick,omitempty"`
}

type adminKick struct {
	Pool    string    `json:"pool"`
	Backend string    `json:"backend"`
	At      time.Time `json:"at"`
}

// NewAdminSync builds the sync for s, with the state loaded at start.
func (s *Server) NewAdminSync() *AdminSync {
	a := &AdminSync{s: s, log: s.log}
	if st, ok := a.load(); ok {
		a.cache(adminMessage{State: st})
	}
	return a
}

// SetShare sets how the state reaches the peer (peer.Node.Share).
func (a *AdminSync) SetShare(share func([]byte) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.share = share
}

// file is the server's state store when it is the memory one; nil with
// Redis, which needs no sync.
func (a *AdminSync) file() *routing.FileState {
	fs, _ := a.s.adminState.(*routing.FileState)
	return fs
}

func (a *AdminSync) load() (routing.AdminState, bool) {
	fs := a.file()
	if fs == nil {
		return routing.AdminState{}, false
	}
	st, err := fs.Load(context.Background())
	return st, err == nil
}

// Changed records an admin action made here (drain, undrain, weight or
// kick of pool/backend): the state, as the store now has it, goes to the
// peer.
func (a *AdminSync) Changed(pool, backend, action string) {
	st, ok := a.load()
	if !ok {
		return
	}
	msg := adminMessage{State: st}
	if action == "kick" {
		msg.Kick = &adminKick{Pool: pool, Backend: backend, At: time.Now()}
	}
	a.cache(adminMessage{State: st})
	a.mu.Lock()
	share := a.share
	a.mu.Unlock()
	if share == nil {
		return
	}
	if b, err := json.Marshal(msg); err == nil && !share(b) {
		a.log.Warn("admin state not sent to the peer (too large, or the peer link is busy); it is sent again when the peer returns")
	}
}

// Payload is the state in force, as the peer gets it (peer.Options.Shared).
// It never waits for a lock: it runs on the heartbeat goroutine.
func (a *AdminSync) Payload() []byte {
	if b := a.payload.Load(); b != nil {
		return *b
	}
	return nil
}

func (a *AdminSync) cache(msg adminMessage) {
	if b, err := json.Marshal(msg); err == nil {
		a.payload.Store(&b)
	}
}

// Receive takes a payload from the peer (peer.Options.OnShared). It
// returns at once and does the work on a goroutine of its own: it runs on
// the heartbeat goroutine, and saving the state file takes a while.
func (a *AdminSync) Receive(b []byte) {
	go a.receive(b)
}

func (a *AdminSync) receive(b []byte) {
	var msg adminMessage
	if err := json.Unmarshal(b, &msg); err != nil {
		a.log.Warn("admin state from the peer not understood", "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur, ok := a.load(); ok && msg.State.Updated.After(cur.Updated) {
		if err := a.file().Replace(msg.State); err != nil {
			a.log.Error("admin state from the peer not saved", "err", err)
		}
		a.s.reloadState()
		a.cache(adminMessage{State: msg.State})
		a.log.Info("admin state taken from the peer", "updated", msg.State.Updated)
	}
	if k := msg.Kick; k != nil && k.At.After(a.lastKick) {
		a.lastKick = k.At
		if p := a.s.Pool(k.Pool); p != nil {
			if bk := p.Backend(k.Backend); bk != nil {
				n := p.Kick(bk)
				a.log.Info("kick from the peer", "pool", k.Pool, "backend", k.Backend, "sessions", n)
			}
		}
	}
}
