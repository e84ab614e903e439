package integration

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
)

// OAuth 2.0 passthrough: OAUTHBEARER and XOAUTH2 through IMAP, POP3 and
// SMTP to backends that check the token; the user named in the message
// routes.

func oauthConfig(backends ...[4]string) string {
	cfg := `[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"

[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:2"
pool = "main"

[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:3"
pool = "main"
smtp_auth = "optional"

[[pool]]
name = "main"
  [pool.health]
  interval = "1h"
`
	for _, b := range backends {
		cfg += fmt.Sprintf("  [[pool.backend]]\n  name = %q\n  imap = %q\n  pop3 = %q\n  smtp = %q\n", b[0], b[1], b[2], b[3])
	}
	return cfg
}

func oauthBearerMsg(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01host=127.0.0.1\x01auth=Bearer " + token + "\x01\x01"))
}

func xoauth2Msg(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// xoauth2Client is XOAUTH2 for go-smtp's and go-imap's clients (go-sasl
// has OAUTHBEARER only).
type xoauth2Client struct{ user, token string }

func (c xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}
func (c xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// waitOffered waits for the health checks to have asked every backend
// for its mechanisms: the IMAP greeting then lists what they all offer.
func waitOffered(t *testing.T, e *env, want string) {
	t.Helper()
	waitFor(t, 5*time.Second, "mechanisms offered: "+want, func() bool {
		s := dialScript(t, e.Addr["imap"])
		defer s.conn.Close()
		return strings.Contains(s.expect("* OK"), want)
	})
}

func TestOAuthPassthrough(t *testing.T) {
	tokens := map[string]string{}
	for i := range 8 {
		tokens[fmt.Sprintf("user%d@example.org", i)] = fmt.Sprintf("tok-%d", i)
	}
	b1, i1, p1, s1 := newOAuthBackend(t, "mail1", "OAUTHBEARER XOAUTH2", tokens)
	b2, i2, p2, s2 := newOAuthBackend(t, "mail2", "OAUTHBEARER XOAUTH2", tokens)
	e := startProxy(t, oauthConfig([4]string{"mail1", i1, p1, s1}, [4]string{"mail2", i2, p2, s2}))
	waitOffered(t, e, "AUTH=OAUTHBEARER AUTH=XOAUTH2")
	where := func(user, proto string) string {
		switch {
		case b1.count(user, proto) > 0 && b2.count(user, proto) == 0:
			return "mail1"
		case b2.count(user, proto) > 0 && b1.count(user, proto) == 0:
			return "mail2"
		}
		return fmt.Sprintf("mail1 %d, mail2 %d", b1.count(user, proto), b2.count(user, proto))
	}

	used := map[string]bool{}
	for i := range 8 {
		user, token := fmt.Sprintf("user%d@example.org", i), fmt.Sprintf("tok-%d", i)
		// IMAP with go-imap's client and OAUTHBEARER (SASL-IR).
		c := dialIMAP(t, e, "plain", nil)
		if err := c.Authenticate(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: user, Token: token})); err != nil {
			t.Fatalf("%s: IMAP OAUTHBEARER: %v", user, err)
		}
		home := where(user, "imap")
		used[home] = true
		// A second session, XOAUTH2 without an initial response, while
		// the first is open: the same backend.
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a AUTHENTICATE XOAUTH2\r\n")
		s.expect("+ ")
		s.send(xoauth2Msg(user, token) + "\r\n")
		s.expect("a OK [CAPABILITY IMAP4rev1 IDLE]")
		s.send("n NOOP\r\n")
		s.expect("n OK " + user + " at " + home)
		// POP3 follows the user's live IMAP sessions.
		p := dialScript(t, e.Addr["pop3"])
		p.expect("+OK")
		p.send("AUTH OAUTHBEARER " + oauthBearerMsg(user, token) + "\r\n")
		p.expect("+OK Logged in at " + home)
		if got := where(user, "pop3"); got != home {
			t.Errorf("%s: POP3 on %s, IMAP on %s", user, got, home)
		}
		c.Close()
	}
	if !used["mail1"] || !used["mail2"] {
		t.Errorf("users landed on %v; want both backends (routing by the user in the message)", used)
	}

	// SMTP with go-smtp's client, both mechanisms.
	for _, mech := range []sasl.Client{
		sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "user1@example.org", Token: "tok-1"}),
		xoauth2Client{"user2@example.org", "tok-2"},
	} {
		c := dialSMTP(t, e, "smtp")
		if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "OAUTHBEARER") || !strings.Contains(mechs, "XOAUTH2") {
			t.Fatalf("SMTP AUTH = %q", mechs)
		}
		if err := c.Auth(mech); err != nil {
			t.Fatalf("SMTP auth: %v", err)
		}
		if err := c.Mail("me@example.org", nil); err != nil {
			t.Fatalf("MAIL after OAuth: %v", err)
		}
		c.Close()
	}
}

func TestOAuthFailureRelaysErrorChallenge(t *testing.T) {
	tokens := map[string]string{"alice": "good"}
	_, i1, p1, s1 := newOAuthBackend(t, "mail1", "OAUTHBEARER XOAUTH2", tokens)
	e := startProxy(t, oauthConfig([4]string{"mail1", i1, p1, s1}))
	waitOffered(t, e, "AUTH=XOAUTH2")
	challenge := base64.StdEncoding.EncodeToString([]byte(oauthErrJSON))

	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", "stale") + "\r\n")
	s.expect("+ " + challenge)
	s.send("AQ==\r\n")
	s.expect("a NO [AUTHENTICATIONFAILED] Invalid token at mail1")
	s.send("b AUTHENTICATE XOAUTH2 " + xoauth2Msg("alice", "stale") + "\r\n")
	s.expect("+ " + challenge)
	s.send("\r\n")
	s.expect("b NO [AUTHENTICATIONFAILED]")
	// Malformed messages: a protocol error, no backend asked.
	s.send("c AUTHENTICATE OAUTHBEARER " + base64.StdEncoding.EncodeToString([]byte("n,a=alice,auth=Bearer x")) + "\r\n")
	s.expect("c BAD Malformed OAUTHBEARER message")
	s.send("d AUTHENTICATE OAUTHBEARER " + base64.StdEncoding.EncodeToString([]byte("n,,\x01auth=Bearer x\x01\x01")) + "\r\n")
	s.expect("d NO [CANNOT]")
	s.send("e AUTHENTICATE XOAUTH2 !!!\r\n")
	s.expect("e BAD Invalid base64")
	// The client may try again and log in.
	s.send("f AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", "good") + "\r\n")
	s.expect("f OK")

	p := dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("AUTH XOAUTH2 " + xoauth2Msg("alice", "stale") + "\r\n")
	p.expect("+ " + challenge)
	p.send("\r\n")
	p.expect("-ERR [AUTH] Invalid token at mail1")
	p.send("AUTH OAUTHBEARER " + base64.StdEncoding.EncodeToString([]byte("user=alice")) + "\r\n")
	p.expect("-ERR Malformed OAUTHBEARER message.")
	p.send("AUTH OAUTHBEARER\r\n")
	p.expect("+ ")
	p.send(oauthBearerMsg("alice", "good") + "\r\n")
	p.expect("+OK Logged in at mail1")

	m := dialScript(t, e.Addr["smtp"])
	m.expect("220 ")
	m.send("EHLO client.example\r\n")
	for !strings.HasPrefix(m.expect("250"), "250 ") {
	}
	m.send("AUTH OAUTHBEARER " + oauthBearerMsg("alice", "stale") + "\r\n")
	m.expect("334 " + challenge)
	m.send("AQ==\r\n")
	m.expect("535 5.7.8 Invalid token at mail1")
	// A client that cancels after the challenge: go-smtp answers the "*",
	// and the backend's half-open exchange is cancelled before the next AUTH.
	m.send("AUTH OAUTHBEARER " + oauthBearerMsg("alice", "stale") + "\r\n")
	m.expect("334 " + challenge)
	m.send("*\r\n")
	m.expect("501 ")
	m.send("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user=alice\x01")) + "\r\n")
	m.expect("501 5.5.2 Malformed SASL message")
	m.send("AUTH XOAUTH2 " + xoauth2Msg("alice", "good") + "\r\n")
	m.expect("235 ")
	m.send("MAIL FROM:<alice@example.org>\r\n")
	m.expect("250 ")
}

// A mechanism one backend of the pool lacks is not offered: the user
// could be routed there.
func TestOAuthOfferedOnlyWhenBackendsOfferIt(t *testing.T) {
	tokens := map[string]string{"alice": "good"}
	_, i1, p1, s1 := newOAuthBackend(t, "mail1", "OAUTHBEARER XOAUTH2", tokens)
	_, i2, p2, s2 := newOAuthBackend(t, "mail2", "XOAUTH2", tokens)
	e := startProxy(t, oauthConfig([4]string{"mail1", i1, p1, s1}, [4]string{"mail2", i2, p2, s2}))
	waitOffered(t, e, "AUTH=XOAUTH2")
	s := dialScript(t, e.Addr["imap"])
	if g := s.expect("* OK"); strings.Contains(g, "OAUTHBEARER") {
		t.Errorf("greeting offers OAUTHBEARER: %q", g)
	}
	s.send("a AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", "good") + "\r\n")
	s.expect("a NO Unsupported authentication mechanism")
	p := dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("CAPA\r\n")
	for l := p.expect(""); l != "."; l = p.expect("") {
		if strings.HasPrefix(l, "SASL") && (strings.Contains(l, "OAUTHBEARER") || !strings.Contains(l, "XOAUTH2")) {
			t.Errorf("POP3 CAPA: %q", l)
		}
	}
	// SMTP offers what the session's own backend offers.
	for range 2 {
		c := dialSMTP(t, e, "smtp")
		_, mechs := c.Extension("AUTH")
		if !strings.Contains(mechs, "XOAUTH2") {
			t.Errorf("SMTP AUTH %q lacks XOAUTH2", mechs)
		}
		if err := c.Auth(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "alice", Token: "good"})); err != nil && !strings.Contains(mechs, "OAUTHBEARER") {
			if code, _, _ := smtpCode(err); code != 504 {
				t.Errorf("OAUTHBEARER to a backend without it: %v", err)
			}
		}
		c.Close()
	}
}

// A backend that is down takes no new session, so what it lacks does not
// hold back what the others offer.
func TestOAuthDownBackendDoesNotHoldBack(t *testing.T) {
	tokens := map[string]string{"alice": "good"}
	_, i1, p1, s1 := newOAuthBackend(t, "mail1", "OAUTHBEARER XOAUTH2", tokens)
	b2, i2, p2, s2 := newOAuthBackend(t, "mail2", "XOAUTH2", tokens)
	cfg := strings.Replace(oauthConfig([4]string{"mail1", i1, p1, s1}, [4]string{"mail2", i2, p2, s2}),
		`interval = "1h"`, "interval = \"50ms\"\n  timeout = \"1s\"\n  fall = 1", 1)
	e := startProxy(t, cfg)
	waitOffered(t, e, "AUTH=XOAUTH2")
	s := dialScript(t, e.Addr["imap"])
	if g := s.expect("* OK"); strings.Contains(g, "OAUTHBEARER") {
		t.Fatalf("OAUTHBEARER offered while mail2 lacks it: %q", g)
	}
	b2.stop()
	waitOffered(t, e, "AUTH=OAUTHBEARER AUTH=XOAUTH2")
	s = dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", "good") + "\r\n")
	s.expect("a OK")
}
