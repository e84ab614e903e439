package integration

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/demo"
)

// TestSessionLogLines: one start and one end line per session, with the
// fields an operator greps for.
func TestSessionLogLines(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	c := dialIMAP(t, e, "plain", nil)
	if err := c.Login("Alice", "pw").Wait(); err == nil {
		t.Fatal("login as Alice should be refused by the case-sensitive fake")
	}
	if err := c.Login("alice", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
	waitFor(t, 5*time.Second, "session end line", func() bool { return strings.Contains(e.Logs.String(), "session end") })
	logs := e.Logs.String()
	if n := strings.Count(logs, "msg=\"session start\""); n != 1 {
		t.Errorf("%d start lines, want 1", n)
	}
	var end string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "session end") {
			end = l
		}
	}
	for _, f := range []string{"user=alice", "backend=mail1", "listener=imap", "client=127.0.0.1:", "bytes_in=", "bytes_out=", "duration=", "outcome=logout", "session="} {
		if !strings.Contains(end, f) {
			t.Errorf("end line lacks %s: %s", f, end)
		}
	}
}

// TestLoginTimeout: a client that never logs in is told and disconnected.
func TestLoginTimeout(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, strings.Replace(imapConfig("", "mail1", addr), `auth_failure_delay = "0s"`, "auth_failure_delay = \"0s\"\nlogin_timeout = \"300ms\"", 1))
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a NOOP\r\n")
	s.expect("a OK")
	s.expect("* BYE Login timeout")
	s.expectClosed()
}

// TestMaxConnections: past the limit a client gets BYE at once; a slot
// freed is usable again.
func TestMaxConnections(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	cfg := strings.Replace(imapConfig("", "mail1", addr), `auth_failure_delay = "0s"`, "auth_failure_delay = \"0s\"\nmax_connections_per_ip = 2", 1)
	e := startProxy(t, cfg)
	a := dialScript(t, e.Addr["imap"])
	a.expect("* OK")
	b := dialScript(t, e.Addr["imap"])
	b.expect("* OK")
	c := dialScript(t, e.Addr["imap"])
	c.expect("* BYE Too many connections")
	c.expectClosed()
	a.send("x LOGOUT\r\n")
	a.expect("* BYE")
	a.expect("x OK")
	a.expectClosed()
	// The slot is released when the session goroutine ends; wait for its end line.
	waitFor(t, 5*time.Second, "first session to end", func() bool {
		return strings.Contains(e.Logs.String(), "session end")
	})
	d := dialScript(t, e.Addr["imap"])
	d.expect("* OK")
}

// TestGracefulShutdown: after Shutdown no new connection is accepted, a
// logged-in session goes on until it logs out, and Shutdown then returns.
func TestGracefulShutdown(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	c := dialIMAP(t, e, "plain", nil)
	if err := c.Login("alice", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.Srv.Shutdown(ctx)
	}()
	waitFor(t, 5*time.Second, "listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", e.Addr["imap"], time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("live session broken by shutdown: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while a session was live", err)
	default:
	}
	c.Logout().Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last session ended")
	}
}

// TestShutdownGraceRunsOut: sessions still live when the grace ends are
// closed and Shutdown says so.
func TestShutdownGraceRunsOut(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, imapConfig("", "mail1", addr))
	c := dialIMAP(t, e, "plain", nil)
	if err := c.Login("alice", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.Srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	select {
	case <-c.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("client connection still open after the grace ran out")
	}
	_ = imapclient.Options{}
}

// TestSMTPSessionLogCountsBytes: SMTP has no relay phase, yet its end line
// says how much went each way.
func TestSMTPSessionLogCountsBytes(t *testing.T) {
	_, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	c := dialSMTP(t, e, "smtp")
	if _, err := sendSMTP(c, "a@example.org", nil, []string{"b@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	waitFor(t, 5*time.Second, "session end line", func() bool { return strings.Contains(e.Logs.String(), "session end") })
	m := regexp.MustCompile(`session end.*bytes_in=(\d+) bytes_out=(\d+)`).FindStringSubmatch(e.Logs.String())
	if m == nil {
		t.Fatalf("no byte counts in the end line:\n%s", e.Logs.String())
	}
	if in, _ := strconv.Atoi(m[1]); in < len(testMessage) {
		t.Errorf("bytes_in=%s, the message alone is %d bytes", m[1], len(testMessage))
	}
	if out, _ := strconv.Atoi(m[2]); out == 0 {
		t.Error("bytes_out=0")
	}
}
