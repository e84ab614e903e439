package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/demo"
)

// TestShutdownSaysGoodbye (issue 10, point 14): when the shutdown grace
// runs out, the sessions still open are told before they are closed: IMAP
// "* BYE", POP3 "-ERR", SMTP "421", on plain and TLS connections alike.
func TestShutdownSaysGoodbye(t *testing.T) {
	all := users(4, "u")
	_, imapAddr := imapBackend(t, "mail1", all, nil)
	_, pop3Addr := pop3Backend(t, "mail1", all, nil)
	_, smtpAddr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, fmt.Sprintf(`
[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "p"

[[listener]]
name = "imaps"
protocol = "imap"
address = "127.0.0.1:2"
tls = "implicit"
pool = "p"

[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:3"
pool = "p"

[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:4"
pool = "p"

[[pool]]
name = "p"
  [[pool.backend]]
  name = "mail1"
  imap = %q
  pop3 = %q
  smtp = %q
`, imapAddr, pop3Addr, smtpAddr))

	imap := dialScript(t, e.Addr["imap"])
	imap.expect("* OK")
	imap.send("a LOGIN u0 pw\r\n")
	imap.expect("a OK")

	tc, err := tls.Dial("tcp", e.Addr["imaps"], e.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	imaps := &script{t: t, conn: tc, r: bufio.NewReader(tc)}
	imaps.expect("* OK")
	imaps.send("a LOGIN u1 pw\r\n")
	imaps.expect("a OK")

	pop3 := dialScript(t, e.Addr["pop3"])
	pop3.expect("+OK")
	pop3.send("USER u2\r\n")
	pop3.expect("+OK")
	pop3.send("PASS pw\r\n")
	pop3.expect("+OK")

	smtp := dialScript(t, e.Addr["smtp"])
	smtp.expect("220")
	smtp.send("EHLO client.example\r\n")
	for !strings.HasPrefix(smtp.expect("250"), "250 ") {
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	e.Srv.Shutdown(ctx)
	for name, c := range map[string]struct {
		s    *script
		want string
	}{
		"imap":  {imap, "* BYE "},
		"imaps": {imaps, "* BYE "},
		"pop3":  {pop3, "-ERR "},
		"smtp":  {smtp, "421 "},
	} {
		c.s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(c.s.r)
		if err != nil && !isClosed(err) {
			t.Errorf("%s: %v after %q", name, err, rest)
		}
		if !strings.HasPrefix(string(rest), c.want) {
			t.Errorf("%s: got %q before the close, want %q", name, rest, c.want+"...")
		}
	}
}

// isClosed says whether a read error is the connection being closed (a
// reset too), not a timeout.
func isClosed(err error) bool {
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// TestRefusalLogRateLimited (issue 10, point 14): a flood of connections
// over the limit does not flood the log: refusals are logged at most
// about once a second, each line saying how many went unlogged, and all of
// them are counted in mailproxy_sessions_total{outcome="refused"}.
func TestRefusalLogRateLimited(t *testing.T) {
	_, addr := imapBackend(t, "mail1", map[string]string{"alice": "pw"}, nil)
	cfg := strings.Replace(imapConfig("", "mail1", addr), `auth_failure_delay = "0s"`, "auth_failure_delay = \"0s\"\nmax_connections_per_ip = 1", 1)
	e := startProxy(t, cfg)
	ac := startAdmin(t, e, "")
	hold := dialScript(t, e.Addr["imap"])
	hold.expect("* OK")
	const flood = 300
	for range flood {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* BYE Too many connections")
		s.conn.Close()
	}
	scrape(t, ac.Addr, fmt.Sprintf(`mailproxy_sessions_total{listener="imap",outcome="refused"} %d`, flood))
	lines := strings.Count(e.Logs.String(), "connection refused: limit reached")
	t.Logf("%d refusals, %d log lines", flood, lines)
	if lines == 0 || lines > 5 {
		t.Errorf("%d refusals logged in %d lines, want one line a second or so", flood, lines)
	}
	// The next line, a second later, says how many were not logged.
	waitFor(t, 5*time.Second, "a refusal line with the count of those not logged", func() bool {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* BYE Too many connections")
		s.conn.Close()
		return strings.Contains(e.Logs.String(), "suppressed=")
	})
	m := regexp.MustCompile(`suppressed=(\d+)`).FindStringSubmatch(e.Logs.String())
	if n, _ := strconv.Atoi(m[1]); n < 1 {
		t.Errorf("suppressed=%s", m[1])
	}
}
