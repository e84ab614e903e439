package integration

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailproxy/proxy"
	"mailproxy/proxy/auth"
)

// The auth penalty: one user's failures from one address slow and then
// refuse that user from that address, and no one else.

func penaltyConfig(imapAddr, pop3Addr, smtpAddr string) string {
	return `[limits]
auth_failure_delay = "2s"
` + strings.SplitN(oauthConfig([4]string{"mail1", imapAddr, pop3Addr, smtpAddr}), "\n\n", 2)[1]
}

func TestPenaltySlowsThenRefusesOneUser(t *testing.T) {
	users := map[string]string{"alice": "right", "bob": "bobpw"}
	_, imapAddr := imapBackend(t, "mail1", users, nil)
	w := &waits{}
	backs := authHTTPBackends(t) // POP3 and SMTP backends that know bob
	e := startProxy(t, penaltyConfig(imapAddr, backs[0][2], backs[0][3]), func(o *proxy.Options) { o.LoginWait = w.wait })

	var replies []string
	for conn := range 4 {
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		for i := range 5 {
			tag := string(rune('a'+conn)) + string(rune('0'+i))
			s.send(tag + " LOGIN alice wrong\r\n")
			replies = append(replies, s.expect(tag+" NO"))
		}
	}
	got := w.take()
	want := []time.Duration{2, 4, 8, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15}
	if len(got) != len(want) {
		t.Fatalf("waits %v, want %v seconds", got, want)
	}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v seconds", got, want)
		}
	}
	for i, r := range replies {
		refused := strings.Contains(r, "Too many failed logins")
		if refused != (i >= 10) {
			t.Errorf("attempt %d: %q", i+1, r)
		}
	}
	// The right password does not help alice from this address now...
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("x LOGIN alice right\r\n")
	s.expect("x NO [UNAVAILABLE] Too many failed logins")
	p := dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("USER alice\r\nPASS right\r\n")
	p.expect("+OK")
	p.expect("-ERR [SYS/TEMP] Too many failed logins")
	w.take()
	// ...while bob, from the same address, logs in at once.
	start := time.Now()
	c := dialIMAP(t, e, "plain", nil)
	if err := c.Login("bob", "bobpw").Wait(); err != nil {
		t.Fatalf("bob: %v", err)
	}
	if d, waited := time.Since(start), w.take(); d > time.Second || len(waited) != 0 {
		t.Errorf("bob's login took %v and waited %v", d, waited)
	}
	p = dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("USER bob\r\nPASS bobpw\r\n")
	p.expect("+OK")
	p.expect("+OK")

	// One log line per refusal, matched by the README's fail2ban filter.
	text, _ := fail2banRegexps(t)
	var lines int
	for _, l := range strings.Split(e.Logs.String(), "\n") {
		if !strings.Contains(l, auth.RefusalMessage) {
			continue
		}
		lines++
		m := text.FindStringSubmatch(l)
		if m == nil || m[text.SubexpIndex("host")] != "127.0.0.1" {
			t.Errorf("fail2ban filter does not find 127.0.0.1 in %q", l)
		}
	}
	if lines != 12 {
		t.Errorf("%d refusal lines, want 12 (10 IMAP, the right password, POP3)", lines)
	}
	rec := httptest.NewRecorder()
	e.Srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{`mailproxy_auth_refusals_total{scope="ip-user"} 12`, "mailproxy_auth_failures_total 10"} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

// The JSON log format's line, and a user name crafted to look like
// another address, against the filter.
func TestFail2banFilter(t *testing.T) {
	text, json := fail2banRegexps(t)
	for _, tc := range []struct {
		re      *regexp.Regexp
		handler func(*bytes.Buffer) slog.Handler
	}{
		{text, func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
		{json, func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
	} {
		var buf bytes.Buffer
		p := auth.NewPenalty(auth.PenaltyOptions{Window: time.Hour, IPUserLimit: 1, Log: slog.New(tc.handler(&buf)),
			Wait: func(context.Context, time.Duration) {}})
		g := p.Guard("2001:db8::7")
		evil := `x client_ip=192.0.2.1 user="y"`
		g.Failed(context.Background(), evil)
		if err := g.Allow(context.Background(), evil); err == nil {
			t.Fatal("not refused")
		}
		line := strings.TrimSpace(buf.String())
		m := tc.re.FindStringSubmatch(line)
		if m == nil || m[tc.re.SubexpIndex("host")] != "2001:db8::7" {
			t.Errorf("filter %s on %q: %q", tc.re, line, m)
		}
	}
}

// fail2banRegexps reads the two failregex lines of the README's filter
// and turns fail2ban's <HOST> into a group named host.
func fail2banRegexps(t *testing.T) (text, json *regexp.Regexp) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "<!-- fail2ban-filter -->")
	block, _, ok2 := strings.Cut(block, "<!-- /fail2ban-filter -->")
	if !ok || !ok2 {
		t.Fatal("README has no fail2ban filter block")
	}
	var res []*regexp.Regexp
	for _, l := range strings.Split(block, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "failregex ="))
		if !strings.HasPrefix(l, "^") {
			continue
		}
		res = append(res, regexp.MustCompile(strings.ReplaceAll(l, "<HOST>", `(?:::f{4,6}:)?(?P<host>[\w\-.:]+)`)))
	}
	if len(res) != 2 {
		t.Fatalf("%d failregex lines in the README, want 2", len(res))
	}
	return res[0], res[1]
}
