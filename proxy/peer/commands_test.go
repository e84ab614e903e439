package peer

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/proxy/config"
)

func TestRunCommand(t *testing.T) {
	for _, c := range []struct {
		line, out, err string
	}{
		{"echo hello; echo oops >&2", "hello\noops", ""},
		{"echo half; exit 3", "half", "exit status 3"},
		{`echo "$MAILPROXY_NODE is $MAILPROXY_ROLE"`, "lb1 is active", ""},
		{"sleep 10", "", "timed out after 200ms"},
		{"sleep 3 & echo started", "started", ""}, // a background child does not hold us
		{"no-such-command-here", "not found", "exit status 127"},
	} {
		start := time.Now()
		out, err := runCommand(context.Background(), c.line, 200*time.Millisecond, []string{"MAILPROXY_NODE=lb1", "MAILPROXY_ROLE=active"})
		if !strings.Contains(out, c.out) || c.err == "" && err != nil || c.err != "" && (err == nil || err.Error() != c.err) {
			t.Errorf("%q: output %q, err %v; want %q, %q", c.line, out, err, c.out, c.err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%q took %v", c.line, d)
		}
	}
	out, _ := runCommand(context.Background(), "head -c 100000 /dev/zero | tr '\\0' x", 5*time.Second, nil)
	if len(out) != maxOutput {
		t.Errorf("output of %d bytes kept, want %d", len(out), maxOutput)
	}
}

// TestCommandsFollowRole runs a node alone in real time with commands on
// both roles: on_standby at start, on_active after the listeners open,
// on_standby again when it stops; a failing command is logged and changes
// nothing.
func TestCommandsFollowRole(t *testing.T) {
	file := filepath.Join(t.TempDir(), "roles")
	record := `echo "$MAILPROXY_NODE $MAILPROXY_ROLE" >> ` + file
	logs := &testkit.SyncBuffer{}
	svc := &fakeService{}
	svc.onOpen = func() {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), "active") {
			t.Errorf("on_active ran before the listeners opened: %q", b)
		}
	}
	cfg := &config.PeerConfig{Node: "lb1", Address: "127.0.0.1:9", Priority: 1,
		Interval: config.Duration{Duration: 20 * time.Millisecond}, DeadAfter: config.Duration{Duration: 100 * time.Millisecond},
		OnActive: []string{record, "echo broken >&2; exit 1"}, OnStandby: []string{record}}
	roles := make(chan Role, 8)
	n, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Conn: newMemNet().listen(),
		Secret: testSecret, Service: svc, OnRole: func(r Role) { roles <- r }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	for _, want := range []Role{Standby, Active} {
		select {
		case r := <-roles:
			if r != want {
				t.Fatalf("role %v, want %v", r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %v within 10s:\n%s", want, logs)
		}
	}
	if !testkit.Eventually(10*time.Second, 5*time.Millisecond, func() bool {
		return strings.Contains(logs.String(), `err="exit status 1"`)
	}) {
		t.Fatalf("on_active did not finish:\n%s", logs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	if string(b) != "lb1 standby\nlb1 active\nlb1 standby\n" {
		t.Errorf("commands ran as %q", b)
	}
	for _, want := range []string{
		`msg="peer command done" node=lb1 event=on_active command="echo \"$MAILPROXY_NODE`,
		`msg="peer command failed" node=lb1 event=on_active command="echo broken >&2; exit 1"`,
		`output=broken err="exit status 1"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// TestSlowHookHoldsNothing: an on_active command that would run for 30 s
// neither delays the switch to active (the listeners open while it runs)
// nor the step-down at shutdown, which kills it.
func TestSlowHookHoldsNothing(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	started := filepath.Join(t.TempDir(), "started")
	cfg := &config.PeerConfig{Node: "lb1", Address: "127.0.0.1:9", Priority: 1,
		Interval: config.Duration{Duration: 20 * time.Millisecond}, DeadAfter: config.Duration{Duration: 100 * time.Millisecond},
		OnActive: []string{"touch " + started + "; sleep 30"}}
	roles := make(chan Role, 8)
	n, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Conn: newMemNet().listen(),
		Secret: testSecret, Service: &fakeService{}, OnRole: func(r Role) { roles <- r }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	for _, want := range []Role{Standby, Active} {
		select {
		case r := <-roles:
			if r != want {
				t.Fatalf("role %v, want %v", r, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %v within 5s:\n%s", want, logs)
		}
	}
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { _, err := os.Stat(started); return err == nil }) {
		t.Fatalf("on_active not started:\n%s", logs)
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stopping took %v behind a running command", d)
	}
	if !strings.Contains(logs.String(), `err="killed: the role changed"`) {
		t.Errorf("the command was not killed:\n%s", logs)
	}
}
