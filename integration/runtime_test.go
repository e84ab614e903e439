package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/demo"
)

// TestRuntimeChangesPersist: with [store] type = "memory" and a
// state_file, a drain, a weight and a pin made through the admin API and
// ctl apply at once and again after a restart; a move kicks the user's
// session and sends the next one to the new backend.
func TestRuntimeChangesPersist(t *testing.T) {
	tr := demo.NewTracker()
	all := users(20, "u")
	f1 := newOpsBackend(t, "mail1", all, tr, 1)
	f2 := newOpsBackend(t, "mail2", all, tr, 2)
	f3 := newOpsBackend(t, "mail3", all, tr, 3)
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := opsConfig(`linger = "0s"`+"\n", "mail1", f1.addr, "mail2", f2.addr, "mail3", f3.addr) +
		"\n[store]\nstate_file = \"" + state + "\"\n"
	e := startProxy(t, cfg)
	ac := startAdmin(t, e, "")
	ctx := context.Background()

	ctl(t, ac, "drain", "p", "mail1")
	if out := ctl(t, ac, "weight", "p", "mail3", "0"); !strings.Contains(out, "p/mail3 has weight 0") {
		t.Errorf("ctl weight printed %q", out)
	}
	if out := ctl(t, ac, "pin", "U0", "p", "mail3"); !strings.Contains(out, "u0@example.org pinned to mail3") {
		t.Errorf("ctl pin printed %q", out)
	}
	check := func(when string, e *env) {
		t.Helper()
		for i := 1; i < len(all); i++ {
			u := fmt.Sprint("u", i)
			if got := backendOf(t, e, u); got != 2 {
				t.Errorf("%s: %s went to mail%d, want mail2 (mail1 drains, mail3 has weight 0)", when, u, got)
			}
		}
		if got := backendOf(t, e, "u0"); got != 3 {
			t.Errorf("%s: pinned u0 went to mail%d, want mail3", when, got)
		}
	}
	check("after the changes", e)
	if b, err := os.ReadFile(state); err != nil || !strings.Contains(string(b), `"mail1": true`) {
		t.Fatalf("state file: %s, %v", b, err)
	}

	e.Srv.Close()
	e2 := startProxy(t, cfg)
	ac2 := startAdmin(t, e2, "")
	check("after a restart", e2)
	st := backendStatus(t, ac2, "mail1")
	if !st.Draining {
		t.Errorf("after a restart mail1 is %+v, want draining", st)
	}

	// Move: a user whose session is on mail2 is moved to mail1 (undrained
	// now): the session is kicked and the next one goes to mail1, which
	// hashing would not choose for that user.
	ctl(t, ac2, "undrain", "p", "mail1")
	var user string
	for i := 1; i < len(all) && user == ""; i++ {
		if u := fmt.Sprint("u", i); backendOf(t, e2, u) == 2 {
			user = u
		}
	}
	if user == "" {
		t.Fatal("no user hashes to mail2")
	}
	// backendOf's own session has logged out; the proxy counts it until it
	// has seen the close, so wait for that, or the move would close it too.
	sessions := func() int {
		us, err := ac2.User(ctx, user)
		if err != nil || len(us.Pools) == 0 {
			return -1
		}
		return len(us.Pools[0].Sessions)
	}
	waitFor(t, 5*time.Second, user+"'s probe session released", func() bool { return sessions() == 0 })
	c := mustLogin(t, e2, user)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, user+"'s session counted", func() bool { return sessions() == 1 })
	if out := ctl(t, ac2, "move", user, "p", "mail1"); !strings.Contains(out, "moved to mail1 in pool p; 1 sessions closed") {
		t.Errorf("ctl move printed %q", out)
	}
	waitFor(t, 5*time.Second, "the moved session to end", func() bool { return c.Noop().Wait() != nil })
	waitFor(t, 5*time.Second, user+" off mail2", func() bool { return len(tr.Sessions(user)) == 0 })
	if got := backendOf(t, e2, user); got != 1 {
		t.Errorf("after the move, %s went to mail%d, want mail1", user, got)
	}
	if _, err := ac2.Pin(ctx, "u0", "p", ""); err != nil {
		t.Fatal(err)
	}
	if us, _ := ac2.User(ctx, "u0"); us.Pools[0].Pin != "" {
		t.Errorf("after unpin, u0 shows pin %q", us.Pools[0].Pin)
	}
	if _, err := ac2.Weight(ctx, "p", "mail3", -1); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("weight -1: %v", err)
	}
	if _, err := ac2.Pin(ctx, "u0", "p", "nope"); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("pin to an unknown backend: %v", err)
	}
}

// backendOf logs user in, selects INBOX and logs out; the message count
// names the backend (opsBackend msgs).
func backendOf(t *testing.T, e *env, user string) int {
	t.Helper()
	c := mustLogin(t, e, user)
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	return int(sel.NumMessages)
}
