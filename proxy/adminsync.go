package proxy

import (
	"encoding/json"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/routing"
)

// AdminSync keeps the runtime admin state (drains) where it must outlive
// this process and this node: in [store] state_file, read back at start,
// and at the peer of an active/standby pair, which gets every drain,
// undrain and kick made here and sends its own. Between two states the
// later change wins (routing.AdminState.Updated), so a node that restarts
// with an old file takes the peer's newer state, and the peer ignores the
// old one. Its methods are safe for concurrent use.
type AdminSync struct {
	s     *Server
	path  string // "" = no state file
	log   *slog.Logger
	share func([]byte) bool // to the peer; nil without one

	payload atomic.Pointer[[]byte] // the state in force as the peer gets it

	mu       sync.Mutex
	updated  time.Time // of the state in force
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

// NewAdminSync builds the sync for s with the state file at path ("" for
// none). It changes nothing until Restore.
func (s *Server) NewAdminSync(path string) *AdminSync {
	return &AdminSync{s: s, path: path, log: s.log}
}

// SetShare sets how the state reaches the peer (peer.Node.Share).
func (a *AdminSync) SetShare(share func([]byte) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.share = share
}

// Restore puts the state file's state in force; call it before serving.
func (a *AdminSync) Restore() error {
	if a.path == "" {
		return nil
	}
	st, err := routing.LoadAdminState(a.path)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.apply(st)
	a.cache(adminMessage{State: a.state()})
	if !st.Updated.IsZero() {
		a.log.Info("admin state restored", "file", a.path, "updated", st.Updated, "draining", drainList(st))
	}
	return nil
}

// Changed records an admin action made here (drain, undrain or kick of
// pool/backend): the state is saved and sent to the peer.
func (a *AdminSync) Changed(pool, backend, action string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	a.updated = now
	st := a.state()
	msg := adminMessage{State: st}
	if action == "kick" {
		msg.Kick = &adminKick{Pool: pool, Backend: backend, At: now}
	}
	a.cache(adminMessage{State: st})
	a.save(st)
	a.send(msg)
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

// Receive takes a payload from the peer (peer.Options.OnShared): a newer
// state is put in force and saved, a new kick is carried out. It returns
// at once and does the work on a goroutine of its own, as it runs on the
// heartbeat goroutine and a state file may be being synced meanwhile.
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
	if msg.State.Updated.After(a.updated) {
		a.apply(msg.State)
		a.cache(adminMessage{State: a.state()})
		a.log.Info("admin state taken from the peer", "updated", msg.State.Updated, "draining", drainList(msg.State))
		a.save(msg.State)
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

// state is the state in force; a.mu is held.
func (a *AdminSync) state() routing.AdminState {
	st := routing.AdminState{Updated: a.updated, Pools: map[string]*routing.PoolState{}}
	for _, p := range a.s.Pools() {
		if ps := p.DrainState(); ps != nil {
			st.Pools[p.Name] = ps
		}
	}
	return st
}

// apply puts st in force; a.mu is held.
func (a *AdminSync) apply(st routing.AdminState) {
	a.updated = st.Updated
	for _, p := range a.s.Pools() {
		p.ApplyState(st.Pools[p.Name])
	}
}

func (a *AdminSync) save(st routing.AdminState) {
	if a.path == "" {
		return
	}
	if err := st.Save(a.path); err != nil {
		a.log.Error("admin state not saved", "err", err)
	}
}

func (a *AdminSync) send(msg adminMessage) {
	if a.share == nil {
		return
	}
	b, err := json.Marshal(msg)
	if err == nil && !a.share(b) {
		a.log.Warn("admin state not sent to the peer (too large, or the peer link is busy); it is sent again when the peer returns")
	}
}

// drainList names the draining backends of st as pool/backend, for logs.
func drainList(st routing.AdminState) []string {
	var out []string
	for pool, ps := range st.Pools {
		if ps == nil {
			continue
		}
		for b, on := range ps.Drain {
			if on {
				out = append(out, pool+"/"+b)
			}
		}
	}
	slices.Sort(out)
	return out
}
