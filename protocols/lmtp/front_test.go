package lmtp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	"mailproxy/protocols/smtp"
)

// fakeBackend is a scripted LMTP backend: it greets, says 250 to LHLO,
// MAIL and RCPT (refusing the addresses in refuse), and after DATA sends
// the replies in data, one line each, or closes when data is nil.
type fakeBackend struct {
	refuse map[string]string // RCPT address -> reply line
	mail   string            // MAIL reply line; "" = 250
	data   []string          // replies after the final dot
	hangUp bool              // close after the replies to the final dot

	mu    sync.Mutex
	lines []string
}

// got returns the lines received so far.
func (b *fakeBackend) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

func (b *fakeBackend) handle(c net.Conn) {
	r := bufio.NewReader(c)
	say := func(s string) { io.WriteString(c, s+"\r\n") }
	say("220 fake LMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		b.mu.Lock()
		b.lines = append(b.lines, line)
		b.mu.Unlock()
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch {
		case verb == "LHLO":
			say("250-fake\r\n250 PIPELINING")
		case verb == "MAIL" && b.mail != "":
			say(b.mail)
		case verb == "RCPT":
			addr := strings.TrimSuffix(strings.TrimPrefix(line[len("RCPT TO:"):], "<"), ">")
			if rep, ok := b.refuse[addr]; ok {
				say(rep)
				continue
			}
			say("250 2.1.5 OK")
		case verb == "DATA":
			if b.data == nil {
				return // lost between RCPT and DATA
			}
			say("354 go")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			for _, rep := range b.data {
				say(rep)
			}
			if b.hangUp {
				return
			}
		case verb == "QUIT":
			say("221 bye")
			return
		default:
			say("250 OK")
		}
	}
}

// serve runs Handler.Serve on one loopback connection with a Route that
// sends each recipient to the backend named by its domain ("@b1" -> b1).
func serve(t *testing.T, backends map[string]*fakeBackend) net.Conn {
	t.Helper()
	addrs := map[string]string{}
	for name, b := range backends {
		addrs[name] = testkit.Serve(t, &testkit.ConnServer{Handle: b.handle})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &protocols.Session{ID: "t", Log: slog.New(slog.DiscardHandler), Hostname: "mailproxy.test"}
	s.Route = func(ctx context.Context, user string) (*protocols.Lease, error) {
		name := user[strings.IndexByte(user, '@')+1:]
		addr, ok := addrs[name]
		if !ok {
			return nil, errors.New("no backend")
		}
		dial := func(ctx context.Context, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			b := protocols.NewBackend(c, name, addr, nil)
			if err := hello(ctx, b); err != nil {
				c.Close()
				return nil, err
			}
			return b, nil
		}
		return protocols.NewLease(name, dial, func() {}), nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s.Conn = c
		Handler{}.Serve(context.Background(), s)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return c
}

// transaction sends one message to rcpts and returns every reply line
// from MAIL on.
func transaction(t *testing.T, c net.Conn, rcpts ...string) []string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	read := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return strings.TrimRight(l, "\r\n")
	}
	read() // greeting
	io.WriteString(c, "LHLO mx.test\r\n")
	for !strings.HasPrefix(read(), "250 ") {
	}
	var out []string
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\n")
	out = append(out, read())
	ok := 0
	for _, rc := range rcpts {
		io.WriteString(c, "RCPT TO:<"+rc+">\r\n")
		l := read()
		out = append(out, l)
		if strings.HasPrefix(l, "250") {
			ok++
		}
	}
	if ok == 0 {
		return out
	}
	io.WriteString(c, "DATA\r\n")
	read()
	io.WriteString(c, "Subject: x\r\n\r\nbody\r\n.\r\n")
	for range ok {
		out = append(out, read())
	}
	return out
}

func TestRepliesPerRecipient(t *testing.T) {
	b1 := &fakeBackend{data: []string{"250 2.0.0 <a@b1> Saved", "552 5.2.2 <c@b1> Quota exceeded"}}
	b2 := &fakeBackend{refuse: map[string]string{"x@b2": "550 5.1.1 <x@b2> User unknown"}, data: []string{"250 2.0.0 <b@b2> Saved"}}
	c := serve(t, map[string]*fakeBackend{"b1": b1, "b2": b2})
	got := transaction(t, c, "a@b1", "b@b2", "x@b2", "c@b1", "d@nowhere")
	want := []string{
		"250 2.0.0 Roger, accepting mail from <s@example.net>",
		"250 2.0.0 I'll make sure <a@b1> gets this",
		"250 2.0.0 I'll make sure <b@b2> gets this",
		"550 5.1.1 <x@b2> User unknown",
		"250 2.0.0 I'll make sure <c@b1> gets this",
		"451 4.3.0 Mailbox server not available, try again later",
		"250 2.0.0 <a@b1> Saved",
		"250 2.0.0 <b@b2> Saved",
		"552 5.2.2 <c@b1> Quota exceeded",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("replies\n got %q\nwant %q", got, want)
	}
	for name, b := range map[string]*fakeBackend{"b1": b1, "b2": b2} {
		var rcpts []string
		for _, l := range b.got() {
			if strings.HasPrefix(l, "RCPT") {
				rcpts = append(rcpts, l)
			}
		}
		if name == "b1" && strings.Join(rcpts, ",") != "RCPT TO:<a@b1>,RCPT TO:<c@b1>" ||
			name == "b2" && strings.Join(rcpts, ",") != "RCPT TO:<b@b2>,RCPT TO:<x@b2>" {
			t.Errorf("%s got %q", name, rcpts)
		}
	}
}

// TestBackendLostBeforeData: a backend that closes at DATA gives 451 for
// its recipients; the other backend's recipients are delivered.
func TestBackendLostBeforeData(t *testing.T) {
	b1 := &fakeBackend{data: []string{"250 2.0.0 <a@b1> Saved"}}
	b2 := &fakeBackend{} // closes at DATA
	c := serve(t, map[string]*fakeBackend{"b1": b1, "b2": b2})
	got := transaction(t, c, "b@b2", "a@b1")
	if len(got) != 5 || !strings.HasPrefix(got[3], "451 4.4.2 <b@b2> ") || got[4] != "250 2.0.0 <a@b1> Saved" {
		t.Fatalf("replies %q", got)
	}
}

// TestMailRefused: a backend's refusal of MAIL is every one of its
// recipients' answer at RCPT, and nothing is acknowledged for them.
func TestMailRefused(t *testing.T) {
	b1 := &fakeBackend{mail: "550 5.7.1 Sender rejected", data: []string{}}
	c := serve(t, map[string]*fakeBackend{"b1": b1})
	got := transaction(t, c, "a@b1", "b@b1")
	if len(got) != 3 || got[1] != "550 5.7.1 Sender rejected" || got[2] != "550 5.7.1 Sender rejected" {
		t.Fatalf("replies %q", got)
	}
}

// TestShortReplies: a backend that answers fewer recipients than it took
// before closing gives 451 for the rest, never 250.
func TestShortReplies(t *testing.T) {
	b1 := &fakeBackend{data: []string{"250 2.0.0 <a@b1> Saved"}, hangUp: true} // c@b1 unanswered
	c := serve(t, map[string]*fakeBackend{"b1": b1})
	got := transaction(t, c, "a@b1", "c@b1")
	if len(got) != 5 || got[3] != "250 2.0.0 <a@b1> Saved" || !strings.HasPrefix(got[4], "451 ") {
		t.Fatalf("replies %q", got)
	}
}

func TestSplitEnhanced(t *testing.T) {
	for _, tc := range []struct{ in, msg string }{
		{"2.0.0 <a@b> Saved", "<a@b> Saved"},
		{"Saved", "Saved"},
		{"2.0 x", "2.0 x"},
	} {
		if _, msg := smtp.SplitEnhanced(tc.in); msg != tc.msg {
			t.Errorf("SplitEnhanced(%q) = %q, want %q", tc.in, msg, tc.msg)
		}
	}
	if err := backendOK("a@b", "2.0.0 <a@b> Saved").(*gosmtp.SMTPError); err.Code != 250 || err.Message != "Saved" {
		t.Errorf("backendOK: %+v", err)
	}
}
