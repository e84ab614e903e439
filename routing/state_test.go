package routing

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestApplyState: the stored admin state goes on top of the config, and
// applying another state undoes what the first one changed.
func TestApplyState(t *testing.T) {
	p, _ := newPool(t, Options{Policies: mailPolicies, Pins: map[string]string{"cfg": "b0"}}, []BackendSpec{spec("b0", 1), spec("b1", 2)})
	b1 := p.Backend("b1")
	var st AdminState
	for _, c := range []Change{
		{"p", "drain", "b0", "1"}, {"p", "weight", "b1", "0"}, {"p", "pin", "u", "b1"},
		{"p", "pin", "cfg", ""}, {"p", "pin", "ghost", "nope"}, {"p", "weight", "nope", "3"},
	} {
		if err := st.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Apply(Change{"p", "weight", "b1", "lots"}); err == nil {
		t.Error("a weight that is no number was taken")
	}
	if err := st.Apply(Change{"p", "reboot", "b1", ""}); err == nil {
		t.Error("an unknown change was taken")
	}
	p.ApplyState(st.Pools["p"])
	if s := p.Status(); !s[0].Draining || s[1].Weight != 0 || p.Pin("u") != "b1" || p.Pin("cfg") != "" || p.Pin("ghost") != "" {
		t.Fatalf("after the state: %+v, pins u=%q cfg=%q ghost=%q", s, p.Pin("u"), p.Pin("cfg"), p.Pin("ghost"))
	}
	// A pin holds on a backend of weight 0; the drained backend takes nobody.
	if l := acquire(t, p, IMAP, "u"); l.Backend != b1 {
		t.Errorf("pinned u went to %s, want b1 (weight 0)", l.Backend.Name)
	}
	p.ApplyState(nil)
	if s := p.Status(); s[0].Draining || s[1].Weight != 2 || p.Pin("cfg") != "b0" || p.Pin("u") != "" {
		t.Fatalf("back to the config: %+v, pins u=%q cfg=%q", s, p.Pin("u"), p.Pin("cfg"))
	}
}

// sharedTable is a MemTable as another instance sharing it sees it: every
// binding has one more live session than this pool holds.
type sharedTable struct{ *MemTable }

func (s sharedTable) Acquire(ctx context.Context, user string, decide func(string, int, bool) string) (Token, error) {
	return s.MemTable.Acquire(ctx, user, func(b string, live int, ok bool) string {
		if ok {
			live++
		}
		return decide(b, live, ok)
	})
}

// TestNoMoveOffOthersSessions: a user whose live backend is down here is
// not moved while another instance holds sessions there (only that
// instance can end them); the login fails instead of splitting the user.
func TestNoMoveOffOthersSessions(t *testing.T) {
	c := newClock()
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute, Table: sharedTable{NewMemTable(c.now)}}, specs(3))
	l := acquire(t, p, IMAP, "u")
	takeDown(t, p, l.Backend, IMAP)
	if _, err := p.Acquire(context.Background(), IMAP, "u"); err != ErrNoBackend {
		t.Fatalf("Acquire while another instance holds u on a down backend: %v, want ErrNoBackend", err)
	}
}

// TestMoveAndKickUser: a move kicks the user's sessions elsewhere and the
// next session goes to the new backend, even with linger 0; a late
// release of a moved session does not end the new one.
func TestMoveAndKickUser(t *testing.T) {
	p, c := newPool(t, Options{Policies: mailPolicies}, specs(3))
	var k killCounter
	old := k.watch(acquire(t, p, IMAP, "u"))
	other := p.Backends()[(old.Backend.index+1)%3]
	n, err := p.Move(context.Background(), "u", other)
	if err != nil || n != 1 || k.count() != 1 {
		t.Fatalf("Move: %d kicked, %v; %d kill callbacks", n, err, k.count())
	}
	next := acquire(t, p, IMAP, "u")
	if next.Backend != other {
		t.Fatalf("after the move u went to %s, want %s", next.Backend.Name, other.Name)
	}
	old.Release() // late
	if b, live, _ := lookupPool(p, "u"); b != other.Name || live != 1 {
		t.Errorf("after the old session's release: %s/%d, want %s/1", b, live, other.Name)
	}
	next.Release()
	c.advance(MoveLinger + time.Second)
	if got := p.KickUser("u", nil); got != 0 {
		t.Errorf("KickUser with no session kicked %d", got)
	}
}

// TestFileState: changes are written to the file and read back by the
// next start; no path keeps them in memory only.
func TestFileState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.json")
	fs, err := NewFileState(path)
	if err != nil {
		t.Fatal(err)
	}
	fs.Apply(ctx, Change{"p", "drain", "b0", "1"})
	fs.Apply(ctx, Change{"p", "pin", "u", "b1"})
	again, err := NewFileState(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := again.Load(ctx)
	if !st.Pools["p"].Drain["b0"] || st.Pools["p"].Pin["u"] != "b1" {
		t.Fatalf("read back: %+v", st.Pools["p"])
	}
	st.Pools["p"].Drain["b0"] = false // a copy: the store keeps its own
	if st2, _ := again.Load(ctx); !st2.Pools["p"].Drain["b0"] {
		t.Error("Load handed out the store's own maps")
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := NewFileState(path); err == nil {
		t.Error("a broken state file was taken")
	}
	mem, _ := NewFileState("")
	if err := mem.Apply(ctx, Change{"p", "drain", "b0", "1"}); err != nil {
		t.Fatal(err)
	}
}

// slowRelease is a MemTable whose releases wait until let is closed, as a
// store's round trip would.
type slowRelease struct {
	*MemTable
	entered chan struct{}
	let     chan struct{}
}

func (s slowRelease) Release(ctx context.Context, user string, tok Token, linger time.Duration) error {
	s.entered <- struct{}{}
	<-s.let
	return s.MemTable.Release(ctx, user, tok, linger)
}

// TestMoveWhileReleaseInFlight: when a backend goes down, its sessions are
// given back to the table after the pool's lock is released. A new session
// of the same user in that moment is moved, not refused: the session
// being given back is this pool's own.
func TestMoveWhileReleaseInFlight(t *testing.T) {
	c := newClock()
	tab := slowRelease{NewMemTable(c.now), make(chan struct{}), make(chan struct{})}
	p, _ := newPool(t, Options{Policies: mailPolicies, Linger: time.Minute, Table: tab}, specs(3))
	l := acquire(t, p, IMAP, "u")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !p.Observe(l.Backend, IMAP, false, "test") {
		}
	}()
	<-tab.entered // the killed lease's release is on its way
	next, err := p.Acquire(context.Background(), IMAP, "u")
	close(tab.let)
	<-done
	if err != nil {
		t.Fatalf("Acquire while the old session's release is in flight: %v", err)
	}
	if next.Backend == l.Backend {
		t.Errorf("moved onto the down backend %s", next.Backend.Name)
	}
}
