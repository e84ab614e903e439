package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// parkIMAPConfig is imapConfig with sessions parked after 20 ms of quiet.
func parkIMAPConfig(backends ...string) string {
	return strings.Replace(imapConfig("", backends...), "auth_failure_delay = \"0s\"", "auth_failure_delay = \"0s\"\npark_after = \"20ms\"", 1)
}

// parkedSessions logs in one client per mode, waits until all of them
// are parked both ways, and returns them.
func parkedSessions(t *testing.T, e *env) []*imapclient.Client {
	t.Helper()
	var cs []*imapclient.Client
	for _, mode := range []string{"plain", "starttls", "implicit"} {
		c := dialIMAP(t, e, mode, nil)
		if err := c.Login("alice", "pw").Wait(); err != nil {
			t.Fatalf("%s login: %v", mode, err)
		}
		cs = append(cs, c)
	}
	waitParked(t, e, 2*len(cs))
	return cs
}

func waitParked(t *testing.T, e *env, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, "parked relay directions", func() bool { return e.Srv.ParkedDirections() == n })
}

// TestParkedSessionsResume: logged-in sessions over plain IMAP, STARTTLS
// and implicit TLS park when quiet and answer their next command, again
// and again.
func TestParkedSessionsResume(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, parkIMAPConfig("mail1", addr))
	cs := parkedSessions(t, e)
	for round := range 3 {
		for i, c := range cs {
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				t.Fatalf("round %d, session %d: SELECT after parking: %v", round, i, err)
			}
			if err := c.Noop().Wait(); err != nil {
				t.Fatalf("round %d, session %d: NOOP: %v", round, i, err)
			}
		}
		waitParked(t, e, 2*len(cs))
	}
	for _, c := range cs {
		if err := c.Logout().Wait(); err != nil {
			t.Fatalf("LOGOUT: %v", err)
		}
	}
	waitParked(t, e, 0)
}

// TestParkedSessionsKick: a kick reaches sessions that are parked.
func TestParkedSessionsKick(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, parkIMAPConfig("mail1", addr))
	cs := parkedSessions(t, e)
	p := e.Srv.Pool("main")
	if n := p.Kick(p.Backend("mail1")); n != len(cs) {
		t.Fatalf("kicked %d sessions, want %d", n, len(cs))
	}
	for i, c := range cs {
		select {
		case <-c.Closed():
		case <-time.After(5 * time.Second):
			t.Fatalf("parked session %d still open after a kick", i)
		}
	}
	waitParked(t, e, 0)
	waitFor(t, 5*time.Second, "end lines", func() bool {
		return strings.Count(e.Logs.String(), `outcome="closed by proxy"`) == len(cs)
	})
}

// TestParkedSessionsShutdown: Shutdown waits for parked sessions as for
// any other (one that logs out lets it return), and cuts the rest when
// its context ends.
func TestParkedSessionsShutdown(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	e := startProxy(t, parkIMAPConfig("mail1", addr))
	cs := parkedSessions(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Srv.Shutdown(ctx) }()
	// One session wakes and logs out while Shutdown waits.
	if err := cs[0].Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT of a parked session during shutdown: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	for i, c := range cs[1:] {
		select {
		case <-c.Closed():
		case <-time.After(5 * time.Second):
			t.Fatalf("parked session %d still open after shutdown", i+1)
		}
	}
	waitParked(t, e, 0)
}

// TestParkedSessionIdleTimeout: a parked POP3 session (POP3 allows a
// short idle timeout) is closed at the idle timeout.
func TestParkedSessionIdleTimeout(t *testing.T) {
	_, addr := pop3Backend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	cfg := strings.Replace(pop3Config("", "", "mail1", addr), "auth_failure_delay = \"0s\"",
		"auth_failure_delay = \"0s\"\npark_after = \"20ms\"\nidle_timeout = \"400ms\"", 1)
	e := startProxy(t, cfg)
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK")
	s.send("USER alice\r\n")
	s.expect("+OK")
	s.send("PASS pw\r\n")
	s.expect("+OK")
	start := time.Now()
	waitParked(t, e, 2)
	s.expectClosed()
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", el)
	}
	waitFor(t, 5*time.Second, "end line", func() bool { return strings.Contains(e.Logs.String(), `outcome="idle timeout"`) })
}
