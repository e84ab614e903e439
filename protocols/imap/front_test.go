package imap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"mailproxy/protocols"
)

// scriptConn is a connection whose client sends input and then EOF, and
// which records everything written to it.
type scriptConn struct {
	net.Conn // nil: only the methods below are used
	in       *strings.Reader
	out      bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)  { return c.in.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error) { return c.out.Write(b) }
func (c *scriptConn) Close() error                { return nil }
func (c *scriptConn) RemoteAddr() net.Addr        { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (c *scriptConn) LocalAddr() net.Addr         { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }

// runFront feeds input to a front dialogue whose backend is never
// reachable and returns what the client was sent.
func runFront(input string) string {
	c := &scriptConn{in: strings.NewReader(input)}
	s := &protocols.Session{
		Conn: c, Log: slog.New(slog.DiscardHandler), MaxLine: 512,
		Dial: func(context.Context, string, func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
			return nil, errors.New("no backend in this test")
		},
	}
	Handler{}.Serve(context.Background(), s)
	return c.out.String()
}

func TestFrontNoBackend(t *testing.T) {
	out := runFront("a LOGIN alice pw\r\nb LOGOUT\r\n")
	for _, want := range []string{"* OK [CAPABILITY IMAP4rev1", "a NO [UNAVAILABLE]", "* BYE", "b OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("reply lacks %q:\n%s", want, out)
		}
	}
}

// TestFrontOverlongCommandTaggedAndClosed is issue 10 point 3: a command
// line over the limit (a test suite's 32 KB ID) is answered with its own
// tag and the connection closes; nothing after it is run.
func TestFrontOverlongCommandTaggedAndClosed(t *testing.T) {
	out := runFront("a1 ID (\"name\" \"" + strings.Repeat("x", 32<<10) + "\")\r\nb NOOP\r\n")
	want := "a1 BAD Line too long\r\n* BYE "
	if !strings.Contains(out, want) || strings.Contains(out, "b OK") {
		t.Errorf("reply %q, want %q and nothing for b", out, want)
	}
	out = runFront(strings.Repeat("x", 600) + "\r\nb NOOP\r\n")
	if !strings.Contains(out, "* BAD Line too long\r\n* BYE ") || strings.Contains(out, "b OK") {
		t.Errorf("no tag: reply %q", out)
	}
}

// TestFrontBadLiteralSizeCloses is issue 10 point 3: a non-synchronising
// literal whose size does not parse closes the connection like one too
// big, for its bytes are on their way and must not run as commands.
func TestFrontBadLiteralSizeCloses(t *testing.T) {
	for _, lit := range []string{"{4294967296+}", "{-1+}", "{9999+}"} {
		out := runFront("a2 LOGIN " + lit + "\r\nb NOOP\r\n")
		if !strings.Contains(out, "a2 BAD ") || !strings.Contains(out, "* BYE ") || strings.Contains(out, "b OK") {
			t.Errorf("%s: reply %q, want a2 BAD, BYE and nothing for b", lit, out)
		}
	}
}

func FuzzFront(f *testing.F) {
	addTranscripts(f)
	f.Add("a AUTHENTICATE LOGIN\r\nYQ==\r\nYg==\r\n")
	f.Add("a AUTHENTICATE PLAIN\r\n*\r\nb LOGIN {3+}\r\nabc x\r\n")
	f.Add("a2 LOGIN {4294967296+}\r\nb NOOP\r\n")
	f.Add("a3 LOGIN {-1+}\r\nb NOOP\r\n")
	f.Add("a1 ID (\"name\" \"" + strings.Repeat("x", 600) + "\")\r\nb NOOP\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		out := runFront(in)
		if !strings.HasPrefix(out, "* OK [CAPABILITY ") {
			t.Fatalf("no greeting: %q", out)
		}
		if strings.Count(out, "\r\n") == 0 || !strings.HasSuffix(out, "\r\n") {
			t.Fatalf("reply not made of CRLF lines: %q", out)
		}
	})
}

// TestForwardIDBounded: however much the client said in ID, the ID
// forwarded stays within what Dovecot's login process reads, so the
// client's ID can never make the backend refuse the login.
func TestForwardIDBounded(t *testing.T) {
	s := &protocols.Session{ID: "abc", Conn: &scriptConn{}}
	var id []string
	for i := range 30 {
		id = append(id, fmt.Sprintf("field%d", i), strings.Repeat("v", 1000))
	}
	got := forwardID(s, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4711}, clientID(id))
	if len("P2 "+got) > maxForwardID || !strings.HasSuffix(got, ")") || !strings.Contains(got, `"field0"`) || !strings.Contains(got, `"x-session-ext-id" "abc"`) {
		t.Errorf("%d bytes: %.200s...", len(got), got)
	}
}

func TestForwardID(t *testing.T) {
	s := &protocols.Session{ID: "abc", Conn: &scriptConn{}}
	id := clientID([]string{"name", "mbsync", "x-originating-ip", "6.6.6.6", "version", `1."4"`})
	got := forwardID(s, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4711}, id)
	want := `ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "4711" "x-connected-ip" "127.0.0.1" "x-connected-port" "2" "x-session-ext-id" "abc" "name" "mbsync" "version" "1.\"4\"")`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
