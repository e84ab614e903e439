package proxy

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/proxy/config"
)

func syncServer(t *testing.T, stateFile string, log *slog.Logger) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte(`
[admin]
listen = ""
[store]
state_file = "`+stateFile+`"
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
	s.reloadState()
	return s
}

func drains(s *Server, backend string) bool {
	for _, st := range s.Pool("p").Status() {
		if st.Name == backend {
			return st.Draining
		}
	}
	return false
}

// TestAdminSync: a drain made on one node reaches the other through the
// payloads a pair exchanges and lands in its state file; a restart with
// an old file takes the newer state, and the newer side ignores the old.
func TestAdminSync(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	a, b := syncServer(t, filepath.Join(dir, "a.json"), quiet), syncServer(t, filepath.Join(dir, "b.json"), quiet)
	sa, sb := a.NewAdminSync(), b.NewAdminSync()
	var toB [][]byte
	sa.SetShare(func(p []byte) bool { toB = append(toB, p); return true })
	if err := a.SetDraining(context.Background(), "p", "mail1", true); err != nil {
		t.Fatal(err)
	}
	sa.Changed("p", "mail1", "drain")
	if len(toB) != 1 {
		t.Fatalf("%d payloads sent for one drain", len(toB))
	}
	sb.receive(toB[0])
	if !drains(b, "mail1") {
		t.Fatal("the drain did not reach b")
	}
	b2 := syncServer(t, filepath.Join(dir, "b.json"), quiet) // b restarts: its file has it
	if !drains(b2, "mail1") {
		t.Fatal("restarted b lost the drain")
	}
	old := b2.NewAdminSync().Payload()
	a.SetDraining(context.Background(), "p", "mail1", false)
	sa.Changed("p", "mail1", "undrain")
	sa.receive(old)
	if drains(a, "mail1") {
		t.Error("a took an older state")
	}
	sb2 := b2.NewAdminSync()
	sb2.receive(sa.Payload())
	if drains(b2, "mail1") {
		t.Error("b kept an older state")
	}
}

// TestAdminSyncKick: a kick made on one node is carried out once on the
// other, however often its payload arrives.
func TestAdminSyncKick(t *testing.T) {
	dir := t.TempDir()
	logs := &testkit.SyncBuffer{}
	a := syncServer(t, filepath.Join(dir, "a.json"), slog.New(slog.DiscardHandler))
	b := syncServer(t, filepath.Join(dir, "b.json"), slog.New(slog.NewTextHandler(logs, nil)))
	sa, sb := a.NewAdminSync(), b.NewAdminSync()
	var sent []byte
	sa.SetShare(func(p []byte) bool { sent = p; return true })
	sa.Changed("p", "mail2", "kick")
	sb.receive(sent)
	sb.receive(sent)
	if n := strings.Count(logs.String(), "kick from the peer"); n != 1 {
		t.Errorf("the kick was carried out %d times, want once:\n%s", n, logs)
	}
}
