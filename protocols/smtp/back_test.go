package smtp

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

	"mailproxy/protocols"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		in    string
		code  int
		lines []string
		bad   bool
	}{
		{in: "220 mx ESMTP Postfix\r\n", code: 220, lines: []string{"mx ESMTP Postfix"}},
		{in: "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n", code: 250, lines: []string{"mx", "PIPELINING", "CHUNKING"}},
		{in: "220\r\n", code: 220, lines: []string{""}},
		{in: "220 bare LF\n", code: 220, lines: []string{"bare LF"}},
		{in: "250-a\r\n251 b\r\n", bad: true},             // code changes
		{in: "250_a\r\n", bad: true},                      // bad separator
		{in: "099 x\r\n", bad: true},                      // not a reply code
		{in: "2x0 x\r\n", bad: true},                      // not digits
		{in: "250-a\r\n", bad: true},                      // ends early
		{in: "", bad: true},                               // nothing
		{in: strings.Repeat("250-x\r\n", 200), bad: true}, // too many lines
	}
	for _, tt := range tests {
		rep, err := readReply(bufio.NewReader(strings.NewReader(tt.in)))
		if tt.bad {
			if err == nil {
				t.Errorf("%q: no error, got %v", tt.in, rep)
			}
			continue
		}
		if err != nil || rep.code != tt.code || strings.Join(rep.lines, "|") != strings.Join(tt.lines, "|") {
			t.Errorf("%q: %v %q, %v", tt.in, rep.code, rep.lines, err)
		}
	}
}

func TestExtensions(t *testing.T) {
	rep := reply{code: 250, lines: []string{"mx greets client.example", "PIPELINING", "size 104857600",
		"AUTH PLAIN LOGIN", "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT", " ", ""}}
	ext := rep.extensions()
	if ext["SIZE"] != "104857600" || ext["AUTH"] != "PLAIN LOGIN" || !strings.Contains(ext["XCLIENT"], "DESTPORT") || len(ext) != 4 {
		t.Errorf("extensions %q", ext)
	}
	if (reply{code: 250, lines: []string{"HELO only"}}).extensions()["XCLIENT"] != "" {
		t.Error("HELO reply has extensions")
	}
}

func TestSplitEnhanced(t *testing.T) {
	tests := []struct {
		in   string
		code gosmtp.EnhancedCode
		msg  string
	}{
		{"2.0.0 Ok: queued as 3F2A1", gosmtp.EnhancedCode{2, 0, 0}, "Ok: queued as 3F2A1"},
		{"Ok: queued", gosmtp.EnhancedCodeNotSet, "Ok: queued"},
		{"2.0 Ok", gosmtp.EnhancedCodeNotSet, "2.0 Ok"},
		{"2.a.0 Ok", gosmtp.EnhancedCodeNotSet, "2.a.0 Ok"},
		{"2.6.0 one\n2.6.0 two", gosmtp.EnhancedCode{2, 6, 0}, "one\ntwo"},
		{"", gosmtp.EnhancedCodeNotSet, ""},
	}
	for _, tt := range tests {
		code, msg := SplitEnhanced(tt.in)
		if code != tt.code || msg != tt.msg {
			t.Errorf("%q: %v %q", tt.in, code, msg)
		}
	}
}

func TestXCLIENTCommands(t *testing.T) {
	client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40123}
	local := &net.TCPAddr{IP: net.ParseIP("2001:db8::25"), Port: 587}
	all := strings.Fields("NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT")
	got := xclientCommands(all, clientAttrs(client, local, "client.example"))
	want := "XCLIENT ADDR=192.0.2.7 PORT=40123 PROTO=ESMTP HELO=client.example DESTADDR=IPV6:2001:db8::25 DESTPORT=587"
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// Only what the backend announced (names case-insensitive).
	got = xclientCommands([]string{"addr", "helo"}, clientAttrs(client, local, "h e=l+o"))
	if want := "XCLIENT ADDR=192.0.2.7 HELO=h+20e+3Dl+2Bo"; len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := xclientCommands([]string{"NAME"}, clientAttrs(client, local, "x")); len(got) != 0 {
		t.Errorf("nothing to send, got %q", got)
	}
	// A HELO name that cannot fit becomes [UNAVAILABLE]; a long one that can
	// fits into a command of its own.
	long := clientAttrs(client, local, strings.Repeat("h", 600))
	if got := xclientCommands(all, long); len(got) != 1 || !strings.Contains(got[0], "HELO=[UNAVAILABLE]") {
		t.Errorf("too long HELO: %q", got)
	}
	mid := clientAttrs(client, local, strings.Repeat("h", 480))
	if got := xclientCommands(all, mid); len(got) != 3 || !strings.HasPrefix(got[1], "XCLIENT HELO=hhh") {
		t.Errorf("long HELO: %q", got)
	}
	// IPv4-mapped addresses are IPv4; zones go.
	if a, _ := xclientAddr(&net.TCPAddr{IP: net.ParseIP("::ffff:198.51.100.1"), Port: 1}); a != "198.51.100.1" {
		t.Errorf("mapped: %q", a)
	}
	if a, _ := xclientAddr(&net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0", Port: 1}); a != "IPV6:fe80::1" {
		t.Errorf("zone: %q", a)
	}
}

// fakeBackend is a scripted SMTP server on one end of a pipe: it answers
// the commands in script (a prefix of the command -> the reply) and
// records every command line. An unscripted command blocks until close.
type fakeBackend struct {
	mu   sync.Mutex
	cmds []string
	done chan struct{}
}

func startFake(t *testing.T, conn net.Conn, greeting string, script map[string]string) *fakeBackend {
	f := &fakeBackend{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		defer conn.Close()
		r := bufio.NewReader(conn)
		io.WriteString(conn, greeting)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			f.mu.Lock()
			f.cmds = append(f.cmds, line)
			f.mu.Unlock()
			verb, _, _ := strings.Cut(line, " ")
			resp, ok := script[line]
			if !ok {
				resp, ok = script[strings.ToUpper(verb)]
			}
			if !ok {
				io.Copy(io.Discard, r) // hang until closed
				return
			}
			io.WriteString(conn, resp)
			if verb == "QUIT" {
				return
			}
		}
	}()
	return f
}

func (f *fakeBackend) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestGreetSequence pins the backend dialogue: greeting, EHLO, XCLIENT
// (answered by a fresh greeting), then go-smtp's client's own EHLO.
func TestGreetSequence(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	fake := startFake(t, s, "220-mx.example ESMTP\r\n220 second line\r\n", map[string]string{
		"EHLO":    "250-mx.example\r\n250-XCLIENT ADDR HELO\r\n250 SIZE 1000\r\n",
		"XCLIENT": "220 mx.example ESMTP after XCLIENT\r\n",
		"QUIT":    "221 bye\r\n",
	})
	b := protocols.NewBackend(c, "mx", "pipe", nil)
	b.ForwardClient = true
	attrs := clientAttrs(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 5}, nil, "client.example")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bk, err := greet(ctx, b, "client.example", attrs, nil, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	cl := bk.c
	if n, ok := cl.MaxMessageSize(); !ok || n != 1000 {
		t.Errorf("SIZE %d %v", n, ok)
	}
	want := []string{"EHLO client.example", "XCLIENT ADDR=192.0.2.9 HELO=client.example", "EHLO client.example"}
	if got := fake.commands(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("commands %q\nwant %q", got, want)
	}
	if b.Greeting != "220 mx.example ESMTP / second line" {
		t.Errorf("greeting %q", b.Greeting)
	}
}

// TestGreetWithoutForwarding: with forward_client off, go-smtp's EHLO is
// the only command before the session's.
func TestGreetWithoutForwarding(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	fake := startFake(t, s, "220 mx\r\n", map[string]string{"EHLO": "250-mx\r\n250 XCLIENT ADDR\r\n"})
	b := protocols.NewBackend(c, "mx", "pipe", nil)
	if _, err := greet(context.Background(), b, "h.example", nil, nil, discardLog()); err != nil {
		t.Fatal(err)
	}
	if got := fake.commands(); len(got) != 1 || got[0] != "EHLO h.example" {
		t.Errorf("commands %q", got)
	}
}

// TestGreetRefusals: a backend that does not greet with 220 fails hello
// (the next backend is tried); one that refuses XCLIENT is used anyway.
func TestGreetRefusals(t *testing.T) {
	c, s := net.Pipe()
	startFake(t, s, "554 5.3.2 not now\r\n", nil)
	if _, err := greet(context.Background(), protocols.NewBackend(c, "mx", "pipe", nil), "h", nil, nil, discardLog()); err == nil {
		t.Error("554 greeting accepted")
	}
	c.Close()

	c, s = net.Pipe()
	defer c.Close()
	fake := startFake(t, s, "220 mx\r\n", map[string]string{
		"EHLO":    "250-mx\r\n250 XCLIENT ADDR\r\n",
		"XCLIENT": "550 5.7.0 Insufficient authorization\r\n",
	})
	b := protocols.NewBackend(c, "mx", "pipe", nil)
	b.ForwardClient = true
	attrs := clientAttrs(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 5}, nil, "h")
	if _, err := greet(context.Background(), b, "h", attrs, nil, discardLog()); err != nil {
		t.Fatalf("refused XCLIENT: %v", err)
	}
	if got := fake.commands(); len(got) != 3 || got[2] != "EHLO h" {
		t.Errorf("commands %q", got)
	}
}

func TestProbe(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	fake := startFake(t, s, "220 mx ESMTP\r\n", map[string]string{"QUIT": "221 bye\r\n"})
	if err := (Handler{}).Probe(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	c.Close() // as the health checker does
	<-fake.done
	if got := fake.commands(); len(got) != 1 || got[0] != "QUIT" {
		t.Errorf("commands %q", got)
	}
	c2, s2 := net.Pipe()
	defer c2.Close()
	startFake(t, s2, "421 4.3.2 shutting down\r\n", nil)
	if err := (Handler{}).Probe(context.Background(), c2); err == nil {
		t.Error("421 greeting passed the probe")
	}
}

// TestBackendAuth: PLAIN with the initial response; PLAIN for a backend
// that wants it after a 334; LOGIN for a backend that has only LOGIN; a
// refusal is the backend's reply, with no "*" after it (Postfix hangs up
// on that).
func TestBackendAuth(t *testing.T) {
	creds := protocols.Credentials{Username: "alice", Password: "pw"}
	plain := "AGFsaWNlAHB3" // \0alice\0pw
	tests := []struct {
		name, ehlo string
		script     map[string]string
		want       []string
		code       int
	}{
		{"plain", "250-mx\r\n250 AUTH PLAIN LOGIN\r\n", map[string]string{"AUTH PLAIN " + plain: "235 2.7.0 ok\r\n"},
			[]string{"AUTH PLAIN " + plain}, 0},
		{"plain after 334", "250-mx\r\n250 AUTH PLAIN\r\n", map[string]string{"AUTH PLAIN " + plain: "334 \r\n", plain: "235 ok\r\n"},
			[]string{"AUTH PLAIN " + plain, plain}, 0},
		{"login", "250-mx\r\n250 AUTH LOGIN\r\n", map[string]string{"AUTH LOGIN": "334 VXNlcm5hbWU6\r\n", "YWxpY2U=": "334 UGFzc3dvcmQ6\r\n", "cHc=": "235 ok\r\n"},
			[]string{"AUTH LOGIN", "YWxpY2U=", "cHc="}, 0},
		{"refused", "250-mx\r\n250 AUTH PLAIN\r\n", map[string]string{"AUTH PLAIN " + plain: "535 5.7.8 Error: authentication failed: bad\r\n"},
			[]string{"AUTH PLAIN " + plain}, 535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := net.Pipe()
			defer c.Close()
			tt.script["EHLO"] = tt.ehlo
			fake := startFake(t, s, "220 mx\r\n", tt.script)
			b := protocols.NewBackend(c, "mx", "pipe", nil)
			bk, err := greet(context.Background(), b, "h", nil, nil, discardLog())
			if err != nil {
				t.Fatal(err)
			}
			err = bk.auth(creds)
			var se *gosmtp.SMTPError
			switch {
			case tt.code == 0 && (err != nil || !bk.authed):
				t.Fatalf("auth: %v", err)
			case tt.code != 0 && (!errors.As(err, &se) || se.Code != tt.code || se.EnhancedCode != (gosmtp.EnhancedCode{5, 7, 8}) || se.Message != "Error: authentication failed: bad"):
				t.Fatalf("auth: %#v", err)
			}
			if got := fake.commands()[1:]; strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("commands %q, want %q", got, tt.want)
			}
		})
	}
}
