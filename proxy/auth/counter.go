package auth

import (
	"context"
	"sync"
	"time"
)

// Counter counts events per key over a sliding window: the store behind
// the Penalty. MemCounter is the default; a shared store (Redis) can
// implement it so that several mailproxy instances count together. Its
// errors make the Penalty let a login through, never refuse one.
type Counter interface {
	// Add records one event for key at now and returns the events within
	// window before now, this one included.
	Add(ctx context.Context, key string, now time.Time, window time.Duration) (int, error)
	// Count returns the events for key within window before now.
	Count(ctx context.Context, key string, now time.Time, window time.Duration) (int, error)
	// Reset forgets key.
	Reset(ctx context.Context, key string) error
}

// slots is how many buckets a window is cut into: a count is exact to
// 1/slots of the window.
const slots = 16

// MemCounter is a Counter in memory, for one instance. Each key holds a
// ring of slots buckets, so memory per key is fixed however many events
// it sees. Keys that have been quiet for a window are dropped as new keys
// come; beyond maxKeys live keys, the new ones are not counted.
type MemCounter struct {
	mu      sync.Mutex
	keys    map[string]*ring
	maxKeys int
	adds    int
}

type ring struct {
	slot  [slots]int64 // the bucket number each count belongs to
	count [slots]int32
	last  time.Time
}

var _ Counter = (*MemCounter)(nil)

// NewMemCounter returns an empty counter that holds at most maxKeys keys
// (default 1,000,000: about 300 MB at worst).
func NewMemCounter(maxKeys int) *MemCounter {
	if maxKeys <= 0 {
		maxKeys = 1_000_000
	}
	return &MemCounter{keys: make(map[string]*ring), maxKeys: maxKeys}
}

func bucket(now time.Time, window time.Duration) int64 {
	w := int64(window) / slots
	if w <= 0 {
		w = 1
	}
	return now.UnixNano() / w
}

func (r *ring) sum(b int64) int {
	n := 0
	for i := range slots {
		if s := r.slot[i]; s > b-slots && s <= b {
			n += int(r.count[i])
		}
	}
	return n
}

// Add implements Counter.
func (m *MemCounter) Add(_ context.Context, key string, now time.Time, window time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.keys[key]
	if r == nil {
		if m.adds++; len(m.keys) >= m.maxKeys || m.adds%1024 == 0 {
			m.sweep(now, window)
		}
		if len(m.keys) >= m.maxKeys {
			return 0, nil
		}
		r = &ring{}
		m.keys[key] = r
	}
	b := bucket(now, window)
	i := b % slots
	if r.slot[i] != b {
		r.slot[i], r.count[i] = b, 0
	}
	r.count[i]++
	r.last = now
	return r.sum(b), nil
}

// Count implements Counter.
func (m *MemCounter) Count(_ context.Context, key string, now time.Time, window time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.keys[key]
	if r == nil {
		return 0, nil
	}
	return r.sum(bucket(now, window)), nil
}

// Reset implements Counter.
func (m *MemCounter) Reset(_ context.Context, key string) error {
	m.mu.Lock()
	delete(m.keys, key)
	m.mu.Unlock()
	return nil
}

// Len is the number of keys held.
func (m *MemCounter) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

// sweep drops the keys quiet for a whole window. The caller holds mu.
func (m *MemCounter) sweep(now time.Time, window time.Duration) {
	for k, r := range m.keys {
		if now.Sub(r.last) > window {
			delete(m.keys, k)
		}
	}
}
