package smtp

import (
	"net"
	"testing"
	"time"
)

// writesConn records each Write that reaches the connection.
type writesConn struct {
	net.Conn
	writes []string
}

func (c *writesConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *writesConn) SetWriteDeadline(time.Time) error { return nil }
func (c *writesConn) Close() error                     { return nil }

// A multi-line reply, which go-smtp writes a line at a time, reaches the
// client in one write; single lines go out as they come.
func TestFrontConnCoalescesMultiLineReplies(t *testing.T) {
	wc := &writesConn{}
	fc := newFrontConn(wc, time.Minute, time.Minute, time.Time{})
	for _, l := range []string{"220 ready\r\n", "250-mail.example\r\n", "250-PIPELINING\r\n", "250 SIZE 100\r\n", "250 2.0.0 OK\r\n"} {
		if n, err := fc.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", l, n, err)
		}
	}
	want := []string{"220 ready\r\n", "250-mail.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n", "250 2.0.0 OK\r\n"}
	if len(wc.writes) != len(want) {
		t.Fatalf("writes %q, want %q", wc.writes, want)
	}
	for i := range want {
		if wc.writes[i] != want[i] {
			t.Errorf("write %d = %q, want %q", i, wc.writes[i], want[i])
		}
	}
	if got := fc.out.Load(); got != int64(len("220 ready\r\n250-mail.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n250 2.0.0 OK\r\n")) {
		t.Errorf("bytes out = %d", got)
	}
}

// The 220 that lets STARTTLS go ahead is still recognised after a
// multi-line reply, and a plain-text reply after it is not sent.
func TestFrontConnStartTLSAfterMultiLine(t *testing.T) {
	wc := &writesConn{}
	fc := newFrontConn(wc, time.Minute, time.Minute, time.Time{})
	for _, l := range []string{"220 ready\r\n", "250-x\r\n", "250 STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n"} {
		fc.Write([]byte(l))
	}
	if _, err := fc.Write([]byte("454 4.7.0 TLS failed\r\n")); err == nil {
		t.Errorf("a plain-text reply after the 220 to STARTTLS was written: %q", wc.writes)
	}
}
