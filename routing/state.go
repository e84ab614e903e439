package routing

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// AdminState is the routing state that operators set at run time through
// the admin API, as one value that can be written to a file ([store]
// state_file), read back at start, and sent to the other node of a pair.
// Each field is the whole of its kind, not a change, so that a newer
// AdminState simply replaces an older one.
type AdminState struct {
	// Updated is when the state last changed, on the clock of the node
	// where it changed; between two states the later one wins.
	Updated time.Time             `json:"updated,omitzero"`
	Pools   map[string]*PoolState `json:"pools"` // by pool name
}

// PoolState is one pool's part of an AdminState.
type PoolState struct {
	Drain map[string]bool `json:"drain,omitempty"` // backend -> draining
}

// DrainState returns the pool's drains as a PoolState; nil when none
// drains.
func (p *Pool) DrainState() *PoolState {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ps *PoolState
	for _, b := range p.backends {
		if b.draining {
			if ps == nil {
				ps = &PoolState{Drain: map[string]bool{}}
			}
			ps.Drain[b.Name] = true
		}
	}
	return ps
}

// ApplyState puts ps in force (nil: nothing drains): the backends it marks
// drain, the others of the pool do not. Names of backends the pool no
// longer has are ignored (the config changed since ps was saved).
func (p *Pool) ApplyState(ps *PoolState) {
	if ps == nil {
		ps = &PoolState{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		b.draining = ps.Drain[b.Name]
	}
}

// LoadAdminState reads a state file written by Save. A file that does not
// exist yet is an empty state, not an error.
func LoadAdminState(path string) (AdminState, error) {
	var st AdminState
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state file: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s: %w", path, err)
	}
	return st, nil
}

// Save writes st to path atomically: to a temporary file in the same
// directory, synced, then renamed over path, so a crash leaves either the
// old file or the new one, never half of one.
func (st AdminState) Save(path string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // the rename itself must survive a crash
		d.Sync()
		d.Close()
	}
	return nil
}
