package protocols

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestPasswordRedacts(t *testing.T) {
	c := Credentials{Username: "alice", Password: "hunter2"}
	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "pw", c.Password, "creds", c)
	js, _ := json.Marshal(c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c.Password), logs.String(), string(js)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
}

func TestReadLine(t *testing.T) {
	r := bufio.NewReaderSize(strings.NewReader("a\r\nbb\n"+strings.Repeat("x", 40)+"\r\nc\r\ntail"), 16)
	for _, want := range []string{"a", "bb"} {
		if got, err := ReadLine(r, 10); err != nil || string(got) != want {
			t.Fatalf("ReadLine = %q, %v; want %q", got, err, want)
		}
	}
	if _, err := ReadLine(r, 10); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("long line: %v", err)
	}
	if got, err := ReadLine(r, 10); err != nil || string(got) != "c" {
		t.Fatalf("after a long line: %q, %v", got, err)
	}
	if _, err := ReadLine(r, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("unterminated tail: %v", err)
	}
}

func TestSASLLogin(t *testing.T) {
	var c Credentials
	srv, err := NewSASLServer("login", &c)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		resp      string
		challenge string
		done      bool
	}{{"", "Username:", false}, {"alice", "Password:", false}, {"pw", "", true}}
	for i, s := range steps {
		var resp []byte
		if i > 0 {
			resp = []byte(s.resp)
		}
		ch, done, err := srv.Next(resp)
		if err != nil || string(ch) != s.challenge || done != s.done {
			t.Fatalf("step %d: %q %v %v", i, ch, done, err)
		}
	}
	if c.Username != "alice" || c.Password != "pw" {
		t.Fatalf("credentials %q", c.Username)
	}
}

func TestSASLPlain(t *testing.T) {
	var c Credentials
	srv, _ := NewSASLServer("PLAIN", &c)
	if _, done, err := srv.Next([]byte("admin\x00alice\x00pw")); !done || err != nil {
		t.Fatalf("plain: %v %v", done, err)
	}
	if c.Username != "alice" || c.Authzid != "admin" || c.Password != "pw" {
		t.Fatalf("got %q/%q", c.Username, c.Authzid)
	}
	if _, err := NewSASLServer("CRAM-MD5", &c); !errors.Is(err, ErrUnknownMechanism) {
		t.Fatalf("CRAM-MD5: %v", err)
	}
}
