package realmail

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/smtp"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/sievefake"
)

// This file is issue 14 point 4: deliveries (Postfix, LMTP) and Sieve
// scripts (ManageSieve) follow the user's IMAP session to its Dovecot.

// backendAction drains or undrains a backend through the admin API.
func (p *mailproxy) backendAction(t *testing.T, backend, action string) {
	t.Helper()
	resp, err := http.Post(p.Admin+"/pools/main/backends/"+backend+"/"+action, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s %s: %s", action, backend, resp.Status)
	}
}

// placeIMAP logs each user in to IMAP through mailproxy while the other
// Dovecot is drained, so that the session lands on inst whatever hashing
// says, and returns the clients (closed when the test ends).
func (p *mailproxy) placeIMAP(t *testing.T, inst string, us []string) []*imapclient.Client {
	t.Helper()
	other := "a"
	if inst == "a" {
		other = "b"
	}
	p.backendAction(t, other, "drain")
	defer p.backendAction(t, other, "undrain")
	var cs []*imapclient.Client
	for _, u := range us {
		c, err := p.dialIMAP(t, "plain", u, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

// submit hands a message to Postfix directly, in plain text (the
// harness's certificate is self-signed), as another MTA would.
func submit(addr, from string, to []string, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// lmtpSavedRE is Dovecot LMTP's line for a delivered message.
var lmtpSavedRE = regexp.MustCompile(`lmtp\((user\d+)\)<[^>]*><[^>]*>: Info: msgid=<([^>]*)>: saved mail to INBOX`)

// TestLMTPDeliveryFollowsIMAP: ten users hold IMAP sessions through
// mailproxy, five on each Dovecot (placed by draining the other, whatever
// hashing would say). One
// message to all ten goes to Postfix, whose transport for these users is
// lmtp:inet: to mailproxy's LMTP listener; mailproxy splits it into one
// LMTP transaction per Dovecot. Each Dovecot's log shows the delivery of
// exactly the users whose IMAP session it holds.
func TestLMTPDeliveryFollowsIMAP(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{lmtp: true})
	p.needProto(t, "lmtp")
	p.needAdmin(t)
	us := users(200, 10)
	p.placeIMAP(t, "a", us[:5])
	p.placeIMAP(t, "b", us[5:])
	where := map[string]string{}
	for inst, byUser := range h.whoUsers(t, set(us)) {
		for u := range byUser {
			where[u] = inst
		}
	}
	for i, u := range us {
		if want := []string{"a", "b"}[i/5]; where[u] != want {
			t.Fatalf("%s's IMAP session is on %q, want dovecot-%s", u, where[u], want)
		}
	}

	m := h.mark(t)
	token := newToken()
	msg := message(token, addrs(us...)...)
	if err := submit(h.addr(t, "POSTFIX_SMTP_PORT"), "sender@example.test", addrs(us...), msg); err != nil {
		t.Fatalf("submit to Postfix: %v", err)
	}
	h.delivered(t, token, us...)
	msgid := token + "@realmail.test"
	var saved map[string][]string
	poll(t, 15*time.Second, "Dovecot's LMTP log lines", func() bool {
		saved = map[string][]string{}
		for _, inst := range instances {
			for _, line := range h.since(t, m, inst) {
				if s := lmtpSavedRE.FindStringSubmatch(line); s != nil && s[2] == msgid {
					saved[inst] = append(saved[inst], s[1])
				}
			}
		}
		return len(saved["a"])+len(saved["b"]) == len(us)
	})
	for _, inst := range instances {
		slices.Sort(saved[inst])
		var want []string
		for _, u := range us {
			if where[u] == inst {
				want = append(want, u)
			}
		}
		slices.Sort(want)
		if !slices.Equal(saved[inst], want) {
			t.Fatalf("dovecot-%s delivered to %v, its IMAP sessions are %v", inst, saved[inst], want)
		}
	}
	delivered := p.logs.find("message delivered", "", "")
	t.Logf("dovecot-a delivered %v, dovecot-b %v; mailproxy: %d backend transactions", saved["a"], saved["b"], len(delivered))
	if len(delivered) < 2 {
		t.Fatalf("mailproxy logged %d deliveries, want one per Dovecot", len(delivered))
	}
}

const realScript = "require [\"fileinto\"];\r\nif header :contains \"subject\" \"[mailproxy]\" {\r\n  fileinto \"INBOX\";\r\n  stop;\r\n}\r\n"

// TestManageSieveFollowsIMAP: a user holds an IMAP session on one Dovecot;
// a script uploaded through mailproxy's ManageSieve (STARTTLS, SASL PLAIN)
// is uploaded there (that Dovecot's log has the login) and a direct
// ManageSieve connection to that Dovecot lists it and returns it.
func TestManageSieveFollowsIMAP(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{lmtp: true})
	p.needProto(t, "managesieve")
	p.needAdmin(t)
	for _, inst := range instances {
		user := map[string]string{"a": "user211", "b": "user212"}[inst]
		t.Run("dovecot-"+inst, func(t *testing.T) {
			p.placeIMAP(t, inst, []string{user})
			m := h.mark(t)
			c, err := sievefake.Dial(p.Addr["sieve"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Conn.Close()
			if !strings.Contains(c.Caps["SIEVE"], "fileinto") {
				t.Errorf("greeting's SIEVE %q lacks Pigeonhole's extensions", c.Caps["SIEVE"])
			}
			if err := c.StartTLS(p.clientTLS(t)); err != nil {
				t.Fatal(err)
			}
			if resp, err := c.AuthPlain(user, h.get(t, "REALMAIL_PASSWORD"), true); err != nil || resp.Err() != nil {
				t.Fatalf("login through mailproxy: %+v %v", resp, err)
			}
			name := "mp-" + inst
			if err := c.PutScript(name, realScript); err != nil {
				t.Fatalf("PUTSCRIPT: %v", err)
			}
			if resp, err := c.Cmd(fmt.Sprintf("SETACTIVE %q", name)); err != nil || resp.Err() != nil {
				t.Fatalf("SETACTIVE: %+v %v", resp, err)
			}
			if err := c.Logout(); err != nil {
				t.Fatal(err)
			}
			ls := h.waitLogins(t, m, "the ManageSieve login", func(ls []login) bool {
				return slices.ContainsFunc(ls, func(l login) bool { return l.proto == "managesieve" })
			})
			for _, l := range ls {
				if l.proto == "managesieve" && (l.inst != inst || l.user != user) {
					t.Fatalf("ManageSieve login on dovecot-%s as %s, want dovecot-%s as %s: %s", l.inst, l.user, inst, user, l.line)
				}
			}
			direct, err := sievefake.Dial(h.addr(t, "DOVECOT_"+strings.ToUpper(inst)+"_SIEVE_PORT"))
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Conn.Close()
			if resp, err := direct.AuthPlain(user, h.get(t, "REALMAIL_PASSWORD"), false); err != nil || resp.Err() != nil {
				t.Fatalf("direct login: %+v %v", resp, err)
			}
			list, err := direct.ListScripts()
			if err != nil || !slices.Contains(list, name+" ACTIVE") {
				t.Fatalf("dovecot-%s lists %q (%v), want %s active", inst, list, err, name)
			}
			if got, err := direct.GetScript(name); err != nil || got != realScript {
				t.Fatalf("dovecot-%s returns %q (%v)", inst, got, err)
			}
			direct.Logout()
		})
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00user211\x00" + h.get(t, "REALMAIL_PASSWORD")))
	for _, e := range p.logs.entries() {
		for k, v := range e {
			if s, ok := v.(string); ok && (s == h.get(t, "REALMAIL_PASSWORD") || strings.Contains(s, ir)) {
				t.Fatalf("a password in mailproxy's log (%s): %v", k, e)
			}
		}
	}
}
