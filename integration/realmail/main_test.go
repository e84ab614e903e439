// Package realmail runs the mailproxy binary in front of real Dovecot and
// Postfix: two Dovecot instances sharing one Maildir and a Postfix
// delivering into it, all started by start.sh on loopback (see README.md).
// Real clients (go-imap, net/smtp, curl, swaks, Python's imaplib, poplib
// and smtplib) talk to mailproxy; the tests check Dovecot's own view
// (`doveadm who`, its logs) of where sessions landed.
//
// The harness is started once per test binary, on first use, and stopped
// by TestMain. Without root or without the programs every test is skipped,
// unless CI=true, where that is a failure: CI must run them.
package realmail

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const installHint = "real-backend tests need dovecot-imapd, dovecot-pop3d, postfix, swaks, curl and root: run integration/realmail/install.sh"

// lastRunFile names the base directory of the latest run, so that a run
// killed before TestMain could stop the harness (a panic, a -timeout) is
// cleaned up by the next one instead of blocking its ports.
const lastRunFile = "/tmp/mailproxy-realmail.last"

// lockFile serialises runs of this package on one machine (see lockMachine).
const lockFile = "/tmp/mailproxy-realmail.lock"

var (
	setupOnce sync.Once
	shared    *harness
	setupErr  error
	skipWhy   string

	machineLock *os.File // held from setup until the process exits
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "realmail: stopping the harness:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// need returns the running harness, starting it on first use. It skips the
// test when the machine cannot run it, except under CI=true.
func need(t *testing.T) *harness {
	t.Helper()
	setupOnce.Do(setup)
	if skipWhy != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s (missing: %s)", installHint, skipWhy)
		}
		t.Skipf("%s (missing: %s)", installHint, skipWhy)
	}
	if setupErr != nil {
		t.Fatalf("realmail harness: %v", setupErr)
	}
	return shared
}

// missing lists what the harness needs and this machine lacks.
func missing() []string {
	var out []string
	if os.Geteuid() != 0 {
		out = append(out, "root")
	}
	for _, p := range []string{"dovecot", "doveadm", "doveconf", "postfix", "postconf", "swaks", "curl", "python3", "openssl", "setpriv"} {
		if _, err := exec.LookPath(p); err != nil {
			out = append(out, p)
		}
	}
	for _, p := range []string{"imap", "pop3"} {
		if _, err := os.Stat("/usr/lib/dovecot/" + p); err != nil {
			out = append(out, "dovecot-"+p+"d")
		}
	}
	return out
}

func setup() {
	if m := missing(); len(m) > 0 {
		skipWhy = strings.Join(m, ", ")
		return
	}
	var err error
	// Kept in a package variable: a collected *os.File would close the
	// descriptor and drop the lock.
	if machineLock, err = lockMachine(lockFile, 5*time.Minute); err != nil {
		setupErr = err
		return
	}
	cleanStale()
	base, err := os.MkdirTemp("/tmp", "realmail")
	if err != nil {
		setupErr = err
		return
	}
	os.WriteFile(lastRunFile, []byte(base), 0o644)
	h := &harness{base: base, dir: filepath.Join(base, "h")}
	shared = h
	start := time.Now()
	// Build mailproxy while the servers start: both take seconds.
	built := make(chan error, 1)
	go func() { built <- buildMailproxy(filepath.Join(base, "mailproxy")) }()
	startErr := h.start()
	buildErr := <-built
	if setupErr = errors.Join(startErr, buildErr); setupErr != nil {
		return
	}
	h.bin = filepath.Join(base, "mailproxy")
	fmt.Fprintf(os.Stderr, "realmail: harness up and mailproxy built in %v (%s)\n", time.Since(start).Round(time.Millisecond), h.dir)
}

// cleanStale stops and removes what a killed earlier run left behind.
// stop.sh only signals processes started for that very directory.
func cleanStale() {
	b, err := os.ReadFile(lastRunFile)
	base := strings.TrimSpace(string(b))
	if err != nil || !strings.HasPrefix(base, "/tmp/realmail") {
		return
	}
	if _, err := os.Stat(base); err == nil {
		fmt.Fprintf(os.Stderr, "realmail: stopping what an earlier run left in %s\n", base)
		output(time.Minute, stopScript(), filepath.Join(base, "h"))
		os.RemoveAll(base)
	}
	os.Remove(lastRunFile)
}

// buildMailproxy builds the binary the way it ships, with the race detector
// when this test binary has it.
func buildMailproxy(out string) error {
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "mailproxy/cmd/mailproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// goTool is the go command that built this test, or the one on PATH.
func goTool() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}
