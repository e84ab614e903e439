package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckExample(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "-config", "../../mailproxy.toml.example"}, &out, &errOut); code != 0 {
		t.Fatalf("check of the example exited %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "ok") {
		t.Errorf("check output: %q", out.String())
	}
}

func TestCheckUnknownKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.toml")
	cfg := `[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:10143"
pool = "main"

[[pool]]
name = "main"
lingr = "60s"

  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:20143"
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"check", "-config", path}, &out, &errOut)
	if code == 0 {
		t.Fatal("check accepted an unknown key")
	}
	msg := errOut.String()
	if !strings.Contains(msg, "lingr") || !strings.Contains(msg, "line 9") {
		t.Errorf("error does not name the key and its line: %q", msg)
	}
}

// auth.mode = "verify": check reads the users file only when it is there;
// run needs it.
func TestVerifyUsersFile(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.passwd")
	path := filepath.Join(dir, "verify.toml")
	cfg := `[admin]
listen = ""

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:10143"
pool = "main"

[[pool]]
name = "main"
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:20143"

[auth]
mode = "verify"
users_file = "` + users + `"
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "-config", path}, &out, &errOut); code != 0 {
		t.Errorf("check without the users file exited %d: %s", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"run", "-config", path}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "users.passwd") {
		t.Errorf("run without the users file: exit %d, %q", code, errOut.String())
	}
	if err := os.WriteFile(users, []byte("alice:{PLAIN}pw\nbob:{MD4}x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run([]string{"check", "-config", path}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "users.passwd:2: ") {
		t.Errorf("check of a bad users file: exit %d, %q", code, errOut.String())
	}
}

// checkConfig writes cfg (one listener and pool are added) and runs
// `mailproxy check` on it.
func checkConfig(t *testing.T, cfg string) (code int, stdout, stderr string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailproxy.toml")
	cfg += `
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:10143"
pool = "main"

[[pool]]
name = "main"
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:20143"
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code = run([]string{"check", "-config", path}, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestCheckPrintsWarnings (issue 10, point 12): check prints what
// Warnings says; the config still passes.
func TestCheckPrintsWarnings(t *testing.T) {
	code, out, errOut := checkConfig(t, "[limits]\nidle_timeout = \"5m\"\n")
	if code != 0 {
		t.Fatalf("check exited %d: %s", code, errOut)
	}
	if !strings.Contains(out, "warning: line 2: limits.idle_timeout: 5m0s is below 29m") {
		t.Errorf("check printed no warning for idle_timeout = 5m:\n%s", out)
	}
}

// TestCheckAdminWithoutToken (issue 10, point 10): an admin API on a
// non-loopback address without a token is refused by check (and run,
// which loads the config the same way); on loopback, or with a token, it
// passes.
func TestCheckAdminWithoutToken(t *testing.T) {
	for _, tc := range []struct {
		admin string
		ok    bool
	}{
		{`listen = "0.0.0.0:9025"`, false},
		{`listen = ":9025"`, false},
		{`listen = "192.0.2.1:9025"`, false},
		{`listen = "[::]:9025"`, false},
		{`listen = "admin.example:9025"`, false},
		{`listen = "0.0.0.0:9025"` + "\ntoken_file = \"admin.token\"", true},
		{`listen = "127.0.0.1:9025"`, true},
		{`listen = "[::1]:9025"`, true},
		{`listen = "localhost:9025"`, true},
		{`listen = ""`, true},
	} {
		code, _, errOut := checkConfig(t, "[admin]\n"+tc.admin+"\n")
		if ok := code == 0; ok != tc.ok {
			t.Errorf("[admin] %s: check exit %d, want ok %v: %s", tc.admin, code, tc.ok, errOut)
		}
		if !tc.ok && !strings.Contains(errOut, "admin.listen") || !tc.ok && !strings.Contains(errOut, "token_file") {
			t.Errorf("[admin] %s: the error does not say what to do: %s", tc.admin, errOut)
		}
	}
}

// TestHelpListsSubcommands (issue 10, point 13): `mailproxy help`,
// `mailproxy --help` and `-h` list the subcommands and exit 0.
func TestHelpListsSubcommands(t *testing.T) {
	for _, arg := range []string{"help", "--help", "-help", "-h"} {
		var out, errOut bytes.Buffer
		code := run([]string{arg}, &out, &errOut)
		if code != 0 {
			t.Errorf("mailproxy %s exited %d: %s", arg, code, errOut.String())
		}
		for _, sub := range []string{"[run]", "check", "ctl", "demo", "version"} {
			if !strings.Contains(out.String(), "mailproxy "+sub) {
				t.Errorf("mailproxy %s does not list %q:\n%s", arg, sub, out.String())
			}
		}
	}
}

// TestRunLogsWarnings (issue 10, point 12): run logs the config's
// warnings when it starts (here it then stops at the missing certificate).
func TestRunLogsWarnings(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.toml")
	cfg := fmt.Sprintf(`[admin]
listen = ""
[tls]
cert = %q
key = %q
[limits]
idle_timeout = "5m"
[[listener]]
name = "imaps"
protocol = "imap"
address = "127.0.0.1:1"
tls = "implicit"
pool = "main"
[[pool]]
name = "main"
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:20143"
`, filepath.Join(dir, "missing.pem"), filepath.Join(dir, "missing.key"))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"run", "-config", path}, &out, &errOut); code == 0 {
		t.Fatalf("run without its certificate exited 0")
	}
	if !strings.Contains(errOut.String(), "limits.idle_timeout: 5m0s is below 29m") {
		t.Errorf("run did not log the warning:\n%s", errOut.String())
	}
}
