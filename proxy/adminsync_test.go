package proxy

import (
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/proxy/config"
)

func syncServer(t *testing.T) *Server { return syncServerLog(t, slog.New(slog.DiscardHandler)) }

func syncServerLog(t *testing.T, log *slog.Logger) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte(`
[admin]
listen = ""
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "p"
[[pool]]
name = "p"
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:2"
  [[pool.backend]]
  name = "mail2"
  imap = "127.0.0.1:3"
`), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{Logger: log, Handlers: map[string]protocols.Handler{"imap": imap.Handler{}}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func draining(s *Server) []string {
	var out []string
	if ps := s.Pool("p").DrainState(); ps != nil {
		for b := range ps.Drain {
			out = append(out, b)
		}
	}
	return out
}

// TestAdminSync: a drain made on one node reaches the other through the
// payloads a pair exchanges, both state files keep it, and a restart with
// an old file takes the newer state while the peer ignores the old one.
func TestAdminSync(t *testing.T) {
	dir := t.TempDir()
	a, b := syncServer(t), syncServer(t)
	sa, sb := a.NewAdminSync(filepath.Join(dir, "a.json")), b.NewAdminSync(filepath.Join(dir, "b.json"))
	for _, s := range []*AdminSync{sa, sb} {
		if err := s.Restore(); err != nil {
			t.Fatal(err)
		}
	}
	var toB [][]byte
	sa.SetShare(func(p []byte) bool { toB = append(toB, p); return true })

	a.Pool("p").SetDraining(a.Pool("p").Backend("mail1"), true)
	sa.Changed("p", "mail1", "drain")
	if len(toB) != 1 {
		t.Fatalf("%d payloads sent for one drain", len(toB))
	}
	sb.Receive(toB[0])
	if !testkit.Eventually(2*time.Second, time.Millisecond, func() bool { return slices.Equal(draining(b), []string{"mail1"}) }) {
		t.Fatalf("b drains %v, want [mail1]", draining(b))
	}

	// b restarts from its file: the drain is there before any peer speaks.
	b2 := syncServer(t)
	sb2 := b2.NewAdminSync(filepath.Join(dir, "b.json"))
	if !testkit.Eventually(2*time.Second, time.Millisecond, func() bool {
		return sb2.Restore() == nil && slices.Equal(draining(b2), []string{"mail1"})
	}) {
		t.Fatalf("restarted b drains %v, want [mail1]", draining(b2))
	}

	// An older state (a node that restarts with a stale file) loses.
	old := sb2.Payload()
	a.Pool("p").SetDraining(a.Pool("p").Backend("mail1"), false)
	sa.Changed("p", "mail1", "undrain")
	sa.receive(old)
	if got := draining(a); len(got) != 0 {
		t.Errorf("a took an older state: drains %v", got)
	}
	sb2.receive(sa.Payload())
	if got := draining(b2); len(got) != 0 {
		t.Errorf("b2 kept an older state: drains %v", got)
	}
}

// TestAdminSyncKick: a kick made on one node is carried out once on the
// other, however often its payload arrives.
func TestAdminSyncKick(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	a, b := syncServer(t), syncServerLog(t, slog.New(slog.NewTextHandler(logs, nil)))
	sa, sb := a.NewAdminSync(""), b.NewAdminSync("")
	var sent []byte
	sa.SetShare(func(p []byte) bool { sent = p; return true })
	sa.Changed("p", "mail2", "kick")
	sb.receive(sent)
	sb.receive(sent)
	if n := strings.Count(logs.String(), "kick from the peer"); n != 1 {
		t.Errorf("the kick was carried out %d times, want once:\n%s", n, logs)
	}
}
