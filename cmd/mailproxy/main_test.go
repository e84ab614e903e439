package main

import (
	"bytes"
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
