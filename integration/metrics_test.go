package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
)

// scrape waits until /metrics shows every line of want, and returns the
// last scrape.
func scrape(t *testing.T, base string, want ...string) string {
	t.Helper()
	var text string
	ok := func() bool {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text = string(b)
		for _, w := range want {
			if !strings.Contains(text, w) {
				return false
			}
		}
		return true
	}
	if !testkit.Eventually(5*time.Second, 10*time.Millisecond, ok) {
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("/metrics lacks %s", w)
			}
		}
		t.Logf("metrics:\n%s", grepLines(text, "mailproxy_"))
	}
	return text
}

// TestMetricsSMTP (issue 10, point 11): a successful SMTP AUTH counts as
// result="ok" and a refused one as "failed"; SMTP's bytes reach
// mailproxy_relay_bytes_total; every session is counted in
// mailproxy_sessions_total by listener and outcome.
func TestMetricsSMTP(t *testing.T) {
	_, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice": "pw"}})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	ac := startAdmin(t, e, "")

	c := dialSMTP(t, e, "smtps")
	if err := c.Auth(sasl.NewPlainClient("", "alice", "pw")); err != nil {
		t.Fatal(err)
	}
	if _, err := sendSMTP(c, "alice@example.org", nil, []string{"b@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	bad := dialSMTP(t, e, "smtps")
	if err := bad.Auth(sasl.NewPlainClient("", "alice", "wrong")); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	bad.Quit()

	text := scrape(t, ac.Addr,
		`mailproxy_logins_total{listener="smtps",protocol="smtp",result="ok"} 1`,
		`mailproxy_logins_total{listener="smtps",protocol="smtp",result="failed"} 1`,
		`mailproxy_sessions_total{listener="smtps",outcome="closed"} 2`,
		`mailproxy_relay_bytes_total{backend="mail1",direction="in",listener="smtps"}`,
		`mailproxy_relay_bytes_total{backend="mail1",direction="out",listener="smtps"}`,
	)
	for _, l := range strings.Split(grepLines(text, `mailproxy_relay_bytes_total{backend="mail1",direction="in",listener="smtps"}`), "\n") {
		var n float64
		if f := strings.Fields(l); len(f) == 2 {
			if _, err := fmt.Sscan(f[1], &n); err == nil && n < float64(len(testMessage)) {
				t.Errorf("relay_bytes_total in = %v, the message alone is %d bytes", n, len(testMessage))
			}
		}
	}
}
