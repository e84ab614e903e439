package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/protocols"
)

// writeFile writes content to name in dir and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuthenticateUserMode(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Options{UsersFile: writeFile(t, dir, "users", "alice:{PLAIN}secret\n"), Normalize: lower})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tt := range []struct {
		c    protocols.Credentials
		want error
	}{
		{protocols.Credentials{Username: "alice", Password: "secret"}, nil},
		{protocols.Credentials{Username: "Alice@Example.org", Password: "secret"}, nil},
		{protocols.Credentials{Username: "alice", Password: "Secret"}, ErrWrongPassword},
		{protocols.Credentials{Username: "bob", Password: "secret"}, ErrUnknownUser},
		{protocols.Credentials{Username: "alice", Password: "secret", Authzid: "alice@example.org"}, nil},
		{protocols.Credentials{Username: "alice", Password: "secret", Authzid: "bob"}, ErrAuthzid},
	} {
		got, err := a.Authenticate(ctx, tt.c)
		if !errors.Is(err, tt.want) {
			t.Errorf("Authenticate(%+v) = %v, want %v", tt.c, err, tt.want)
			continue
		}
		if err != nil {
			if got != (protocols.Credentials{}) {
				t.Errorf("refusal returned credentials %+v", got)
			}
			continue
		}
		// User mode: the client's own credentials go to the backend.
		if want := (protocols.Credentials{Username: tt.c.Username, Password: tt.c.Password}); got != want {
			t.Errorf("Authenticate(%+v) = %+v, want %+v", tt.c, got, want)
		}
	}
}

func TestAuthenticateMasterMode(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Options{
		UsersFile:          writeFile(t, dir, "users", "alice:{PLAIN}secret\n"),
		MasterUser:         "proxy",
		MasterPasswordFile: writeFile(t, dir, "master", "  proxypw\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Authenticate(context.Background(), protocols.Credentials{Username: "alice", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (protocols.Credentials{Username: "proxy", Password: "proxypw", Authzid: "alice"}); got != want {
		t.Errorf("got %#v, want the master user with authzid alice", got)
	}
	if _, err := a.Authenticate(context.Background(), protocols.Credentials{Username: "alice", Password: "proxypw"}); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("the master password logs a user in: %v", err)
	}
	// The master password never shows when the credentials are printed.
	if s := fmt.Sprintf("%v %+v %#v", got, got, got); strings.Contains(s, "proxypw") {
		t.Errorf("master password printed: %s", s)
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	users := writeFile(t, dir, "users", "alice:{PLAIN}x\n")
	for _, tt := range []struct {
		name string
		opts Options
		msg  string
	}{
		{"no users file", Options{}, "no users file"},
		{"missing users file", Options{UsersFile: filepath.Join(dir, "nope")}, "no such file"},
		{"bad users file", Options{UsersFile: writeFile(t, dir, "bad", "a:{X}y\n")}, "bad:1: user \"a\": {X}: unknown scheme"},
		{"master without file", Options{UsersFile: users, MasterUser: "proxy"}, "without a master password file"},
		{"missing master file", Options{UsersFile: users, MasterUser: "proxy", MasterPasswordFile: filepath.Join(dir, "nope")}, "master password"},
		{"empty master file", Options{UsersFile: users, MasterUser: "proxy", MasterPasswordFile: writeFile(t, dir, "empty", " \n")}, "is empty"},
	} {
		if _, err := New(tt.opts); err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.msg)
		}
	}
}

// Reload swaps the users and the master password in at once; a file with
// errors leaves the loaded ones in force.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	users := writeFile(t, dir, "users", "alice:{PLAIN}one\n")
	master := writeFile(t, dir, "master", "m1")
	a, err := New(Options{UsersFile: users, MasterUser: "proxy", MasterPasswordFile: master})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	login := func(user, pw string) (protocols.Credentials, error) {
		return a.Authenticate(ctx, protocols.Credentials{Username: user, Password: protocols.Password(pw)})
	}

	writeFile(t, dir, "users", "alice:{PLAIN}two\nbob:{PLAIN}b\n")
	writeFile(t, dir, "master", "m2")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := login("alice", "one"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("old password after reload: %v", err)
	}
	if c, err := login("bob", "b"); err != nil || c.Password != "m2" || a.Users() != 2 {
		t.Errorf("after reload: %+v %v, %d users", c, err, a.Users())
	}

	writeFile(t, dir, "users", "alice:{PLAIN}three\ncarol:{NOPE}x\n")
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("bad file reloaded: %v", err)
	}
	writeFile(t, dir, "users", "alice:{PLAIN}three\n")
	os.Remove(master)
	if err := a.Reload(); err == nil {
		t.Error("reload without the master password file succeeded")
	}
	if c, err := login("alice", "two"); err != nil || c.Password != "m2" || a.Users() != 2 {
		t.Errorf("a failed reload changed the users: %+v %v", c, err)
	}
}

// A login waiting for a turn gives up with its context.
func TestAuthenticateWaitsForATurn(t *testing.T) {
	a, err := New(Options{UsersFile: writeFile(t, t.TempDir(), "users", "alice:{PLAIN}x\n"), MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	a.sem <- struct{}{} // the only turn is taken
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.Authenticate(ctx, protocols.Credentials{Username: "alice", Password: "x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	<-a.sem
	if _, err := a.Authenticate(context.Background(), protocols.Credentials{Username: "alice", Password: "x"}); err != nil {
		t.Errorf("after the turn is free: %v", err)
	}
}
