package routing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ErrNotFound is wrapped by admin changes that name an unknown pool or
// backend.
var ErrNotFound = errors.New("not found")

// AdminState is the runtime admin state of every pool: what operators changed
// through the admin API (drains, weights, pins) on top of the config. It is
// what a StateStore keeps, so that the changes survive a restart and, with a
// shared store, apply on every instance.
type AdminState struct {
	Pools map[string]*PoolState `json:"pools"`
	// Updated is when a change was last applied, on the clock of the node
	// that applied it: of two states (the two nodes of a pair), the later
	// one wins.
	Updated time.Time `json:"updated,omitzero"`
}

// PoolState is one pool's runtime changes, by backend or user name.
type PoolState struct {
	Drain  map[string]bool   `json:"drain,omitempty"`  // backend -> draining
	Weight map[string]int    `json:"weight,omitempty"` // backend -> weight, instead of the config's
	Pin    map[string]string `json:"pin,omitempty"`    // user -> backend; "" removes a config pin
}

// Change is one admin change to an AdminState.
type Change struct {
	Pool  string
	Kind  string // "drain" (Value "1" or ""), "weight" (Value the number), "pin" (Value the backend, "" unpins)
	Name  string // the backend (drain, weight) or the user (pin)
	Value string
}

// Apply records c in s.
func (s *AdminState) Apply(c Change) error {
	// Strictly later than the change before, even within one tick of a
	// coarse clock: the pair keeps the newer state by this time.
	now := time.Now()
	if !now.After(s.Updated) {
		now = s.Updated.Add(time.Nanosecond)
	}
	s.Updated = now
	if s.Pools == nil {
		s.Pools = map[string]*PoolState{}
	}
	ps := s.Pools[c.Pool]
	if ps == nil {
		ps = &PoolState{}
		s.Pools[c.Pool] = ps
	}
	switch c.Kind {
	case "drain":
		if ps.Drain == nil {
			ps.Drain = map[string]bool{}
		}
		ps.Drain[c.Name] = c.Value != ""
	case "weight":
		var w int
		if _, err := fmt.Sscan(c.Value, &w); err != nil {
			return fmt.Errorf("weight %q: %w", c.Value, err)
		}
		if ps.Weight == nil {
			ps.Weight = map[string]int{}
		}
		ps.Weight[c.Name] = w
	case "pin":
		if ps.Pin == nil {
			ps.Pin = map[string]string{}
		}
		ps.Pin[c.Name] = c.Value
	default:
		return fmt.Errorf("unknown change %q", c.Kind)
	}
	return nil
}

// StateStore keeps the AdminState where the next start, and with a shared store
// every other instance, finds it. Apply must be atomic per change: several
// instances may apply changes at once.
type StateStore interface {
	Load(ctx context.Context) (AdminState, error)
	Apply(ctx context.Context, c Change) error
}

// FileState is the StateStore of a single instance: the AdminState in memory,
// and, when a path is set, in a JSON file rewritten (atomically, by
// rename) on every change and read at start.
type FileState struct {
	path string
	mu   sync.Mutex
	st   AdminState
}

var _ StateStore = (*FileState)(nil)

// NewFileState reads path (empty: memory only; a missing file: an empty
// state) and returns the store.
func NewFileState(path string) (*FileState, error) {
	f := &FileState{path: path}
	if path == "" {
		return f, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	if err := json.Unmarshal(b, &f.st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return f, nil
}

// Load implements StateStore; the AdminState returned is a copy.
func (f *FileState) Load(context.Context) (AdminState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(f.st) // plain maps: cannot fail
	var c AdminState
	json.Unmarshal(b, &c)
	return c, nil
}

// Apply implements StateStore.
func (f *FileState) Apply(_ context.Context, c Change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.st.Apply(c); err != nil {
		return err
	}
	return f.save()
}

// Replace puts st in place of the whole state (the pair's newer state,
// from its peer) and saves it.
func (f *FileState) Replace(st AdminState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	return f.save()
}

// save writes the state file; f.mu is held.
func (f *FileState) save() error {
	if f.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(f.st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".mailproxy-state-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	return nil
}

// ApplyState sets the pool's drains, weights and pins to the config's
// with ps on top (nil: the config's alone). Names the pool does not know
// are skipped: the store may hold changes made under another config.
func (p *Pool) ApplyState(ps *PoolState) {
	if ps == nil {
		ps = &PoolState{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		b.draining = ps.Drain[b.Name]
		b.weight = b.baseWeight
		if w, ok := ps.Weight[b.Name]; ok {
			b.weight = max(w, 0)
		}
	}
	clear(p.pins)
	for u, name := range p.opts.Pins {
		p.pins[u] = name
	}
	for u, name := range ps.Pin {
		switch {
		case name == "":
			delete(p.pins, u)
		case p.byName[name] != nil:
			p.pins[u] = name
		}
	}
}
