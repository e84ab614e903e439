package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
)

// binary builds mailproxy once per test run.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mailproxy-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "mailproxy")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func mustBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestSystemdUnit: systemd-analyze verify accepts the unit (with ExecStart
// pointing at a built binary, since verify checks that it exists).
func TestSystemdUnit(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing under CI=true: integration/realmail/install.sh installs systemd")
		}
		t.Skip("no systemd-analyze here")
	}
	bin := mustBinary(t)
	unit, err := os.ReadFile("systemd/mailproxy.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_PACKET"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	path := filepath.Join(t.TempDir(), "mailproxy.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/mailproxy"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// notifySocket listens where $NOTIFY_SOCKET will point and hands each
// datagram to the channel.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

// expectNotify waits for a message starting with prefix, skipping STATUS=
// and WATCHDOG=1 lines.
func expectNotify(t *testing.T, ch <-chan string, prefix string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("notify socket closed waiting for %q", prefix)
			}
			if strings.HasPrefix(m, "STATUS=") || m == "WATCHDOG=1" {
				continue
			}
			if !strings.HasPrefix(m, prefix) {
				t.Fatalf("got %q from mailproxy, want %q", m, prefix)
			}
			return m
		case <-deadline:
			t.Fatalf("no %q from mailproxy within 10s", prefix)
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

const notifyConfig = `[admin]
listen = %q
token_file = %q
[limits]
auth_failure_delay = "0s"
[[listener]]
name = "imap"
protocol = "imap"
address = %q
pool = "main"
[[pool]]
name = "main"
%s
`

// TestRunNotify runs `mailproxy run` as systemd would (NOTIFY_SOCKET and
// WATCHDOG_USEC set): READY=1 once serving, WATCHDOG=1 pings,
// RELOADING=1 / READY=1 around a reload by SIGHUP and by `ctl reload`, a
// refused reload that keeps the old config, STOPPING=1 on SIGTERM.
func TestRunNotify(t *testing.T) {
	bin := mustBinary(t)
	dir := t.TempDir()
	sock, ch := notifySocket(t)
	b1 := testkit.Serve(t, demo.NewIMAPServer("mail1", map[string]string{"alice": "pw"}, nil))
	b2 := testkit.Serve(t, demo.NewIMAPServer("mail2", map[string]string{"alice": "pw"}, nil))
	adminAddr, imapAddr := freePort(t), freePort(t)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	cfgPath := filepath.Join(dir, "mailproxy.toml")
	write := func(backends ...string) {
		t.Helper()
		var bs strings.Builder
		for i, a := range backends {
			fmt.Fprintf(&bs, "[[pool.backend]]\nname = \"mail%d\"\nimap = %q\n", i+1, a)
		}
		if err := os.WriteFile(cfgPath, fmt.Appendf(nil, notifyConfig, adminAddr, token, imapAddr, bs.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(b1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", "-config", cfgPath)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	logs := &testkit.SyncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("mailproxy log:\n%s", logs.String())
		}
	}()

	expectNotify(t, ch, "READY=1")
	if c, err := net.DialTimeout("tcp", imapAddr, 5*time.Second); err != nil {
		t.Fatalf("READY=1 before the listener serves: %v", err)
	} else {
		c.Close()
	}
	expectWatchdog(t, ch)

	cmd.Process.Signal(syscall.SIGHUP)
	m := expectNotify(t, ch, "RELOADING=1\nMONOTONIC_USEC=")
	if len(m) <= len("RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without a time: %q", m)
	}
	expectNotify(t, ch, "READY=1")

	ctl := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"ctl", "-config", cfgPath}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	write(b1, b2)
	if code, out, errOut := ctl("reload"); code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("ctl reload: %d %q %q", code, out, errOut)
	}
	expectNotify(t, ch, "RELOADING=1")
	expectNotify(t, ch, "READY=1")
	if _, out, _ := ctl("status"); !strings.Contains(out, "mail2") {
		t.Errorf("the reload did not add mail2:\n%s", out)
	}

	// A config that does not load: refused, said to the caller, logged;
	// the old one stays.
	os.WriteFile(cfgPath, []byte("[[listener]]\nname = 1\n"), 0o600)
	code, _, errOut := ctl("-admin", adminAddr, "-token-file", token, "reload")
	if code != 1 || !strings.Contains(errOut, "listener") || !strings.Contains(errOut, "HTTP 422") {
		t.Errorf("ctl reload of a bad config: %d %q", code, errOut)
	}
	expectNotify(t, ch, "RELOADING=1")
	expectNotify(t, ch, "READY=1")
	if _, out, _ := ctl("-admin", adminAddr, "-token-file", token, "status"); !strings.Contains(out, "mail2") {
		t.Errorf("the refused reload changed the config:\n%s", out)
	}
	if !strings.Contains(logs.String(), "reload refused") {
		t.Error("the refused reload was not logged")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, ch, "STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("mailproxy exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("mailproxy did not stop after SIGTERM")
	}
}

func expectWatchdog(t *testing.T, ch <-chan string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ch:
			if m == "WATCHDOG=1" {
				return
			}
		case <-deadline:
			t.Fatal("no WATCHDOG=1 within 5s with WATCHDOG_USEC=200000")
		}
	}
}
