package realmail

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/smtp"
	"strings"
	"testing"
	"time"
)

// newToken is a unique marker to find one test message again.
func newToken() string {
	var b [8]byte
	rand.Read(b[:])
	return "rm" + hex.EncodeToString(b[:])
}

// message is a small RFC 5322 message that carries token in a header
// (for IMAP SEARCH) and in its body.
func message(token string, to ...string) string {
	return strings.ReplaceAll(fmt.Sprintf(`From: Sender <sender@example.test>
To: %s
Subject: realmail %s
Date: %s
Message-ID: <%s@realmail.test>
X-Realmail-Token: %s

Sent through mailproxy by the realmail tests.
token %s
`, strings.Join(to, ", "), token, time.Now().Format(time.RFC1123Z), token, token, token), "\n", "\r\n")
}

func addrs(users ...string) []string {
	out := make([]string, len(users))
	for i, u := range users {
		out[i] = u + "@example.test"
	}
	return out
}

// sendSMTP sends one message through a mailproxy SMTP listener with
// Go's net/smtp: EHLO, STARTTLS, AUTH PLAIN as authUser when set, then the
// transaction. from is the client's loopback source address ("" = any).
func (p *mailproxy) sendSMTP(t *testing.T, listener, from, authUser, token string, rcpts ...string) error {
	return p.sendSMTPBody(t, listener, from, authUser, message(token, addrs(rcpts...)...), rcpts...)
}

// sendSMTPBody is sendSMTP with the whole message given.
func (p *mailproxy) sendSMTPBody(t *testing.T, listener, from, authUser, msg string, rcpts ...string) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", p.Addr[listener])
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(nc, "127.0.0.1")
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := c.Hello("client.realmail.test"); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	if err := c.StartTLS(p.clientTLS(t)); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if authUser != "" {
		if err := c.Auth(smtp.PlainAuth("", authUser, "pw", "127.0.0.1")); err != nil {
			return fmt.Errorf("AUTH: %w", err)
		}
	}
	if err := c.Mail("sender@example.test"); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range addrs(rcpts...) {
		if err := c.Rcpt(r); err != nil {
			return fmt.Errorf("RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return c.Quit()
}

// TestSMTPToIMAPAndPOP3 is issue 7 point 1: one message sent through
// mailproxy's SMTP listener (to Postfix, which delivers into the shared
// Maildir) is read back through mailproxy's IMAP listener and its POP3
// listener, from both Dovecots. user3 is pinned to dovecot-a and user4 to
// dovecot-b for IMAP; user5's two POP3 logins are balanced round-robin, so
// one lands on each.
func TestSMTPToIMAPAndPOP3(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{pins: map[string]string{"user3": "a", "user4": "b"}})
	p.needProto(t, "smtp")
	token := newToken()
	m := h.mark(t)
	if err := p.sendSMTP(t, "smtp", "", "", token, "user3", "user4", "user5"); err != nil {
		t.Fatalf("send through mailproxy: %v", err)
	}
	h.delivered(t, token, "user3", "user4", "user5")

	t.Run("imap", func(t *testing.T) {
		for _, c := range []struct{ user, inst string }{{"user3", "a"}, {"user4", "b"}} {
			m := h.mark(t)
			msg := p.readIMAP(t, "starttls", c.user, token)
			if !strings.Contains(msg, "token "+token) {
				t.Errorf("%s: message read over IMAP lacks the body:\n%s", c.user, msg)
			}
			ls := h.waitLogins(t, m, "Dovecot's login line for "+c.user, func(ls []login) bool { return len(ls) > 0 })
			if ls[0].inst != c.inst || ls[0].user != c.user {
				t.Errorf("%s read on dovecot-%s, want dovecot-%s: %s", c.user, ls[0].inst, c.inst, ls[0].line)
			}
		}
	})

	t.Run("pop3", func(t *testing.T) {
		p.needProto(t, "pop3")
		m := h.mark(t)
		for i := range 2 {
			c, err := p.dialPOP3(t, "pop3", i == 1, "")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.login("user5", "pw"); err != nil {
				c.close()
				t.Fatal(err)
			}
			_, msg, err := c.find(token)
			if err != nil {
				c.close()
				t.Fatalf("POP3 read %d: %v", i+1, err)
			}
			if !strings.Contains(msg, "X-Realmail-Token: "+token) {
				t.Errorf("POP3 RETR lacks the header:\n%s", msg)
			}
			if err := c.quit(); err != nil {
				t.Fatal(err)
			}
		}
		ls := h.waitLogins(t, m, "two POP3 logins of user5", func(ls []login) bool { return len(ls) >= 2 })
		if ls[0].inst == ls[1].inst {
			t.Errorf("both POP3 reads on dovecot-%s, want one on each:\n%s\n%s", ls[0].inst, ls[0].line, ls[1].line)
		}
	})

	// The message went through mailproxy to Postfix, not around it.
	var queued bool
	for _, line := range h.since(t, m, "postfix") {
		queued = queued || strings.Contains(line, "message-id=<"+token+"@realmail.test>")
	}
	if !queued {
		t.Errorf("Postfix log has no message-id=<%s@realmail.test>", token)
	}
	if n := len(p.logs.find("session end", "listener", "smtp")); n == 0 {
		t.Errorf("mailproxy logged no SMTP session")
	}
}

// TestLargeMessage sends 4 MiB through mailproxy's submission listener
// (STARTTLS, AUTH) and reads it back byte for byte through IMAPS and
// POP3S: big transfers both ways through the relay, with TLS on the
// client side and plain TCP to the servers.
func TestLargeMessage(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	p.needProto(t, "smtp")
	const user = "user80"
	token := newToken()
	raw := make([]byte, 3<<20) // 4 MiB once in base64
	rand.Read(raw)
	b64 := base64.StdEncoding.EncodeToString(raw)
	var body strings.Builder
	for len(b64) > 76 {
		body.WriteString(b64[:76] + "\r\n")
		b64 = b64[76:]
	}
	body.WriteString(b64 + "\r\n")
	msg := strings.Replace(message(token, user+"@example.test"), "\r\n\r\n", "\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n", 1)
	msg = msg[:strings.Index(msg, "\r\n\r\n")+4] + body.String()
	want := sha256.Sum256([]byte(body.String()))
	start := time.Now()
	if err := p.sendSMTPBody(t, "submission", "", user, msg, user); err != nil {
		t.Fatal(err)
	}
	h.delivered(t, token, user)
	t.Logf("4 MiB sent and delivered in %v", time.Since(start).Round(time.Millisecond))

	bodyOf := func(full string) [32]byte {
		full = strings.ReplaceAll(full, "\r\n", "\n")
		_, b, _ := strings.Cut(full, "\n\n")
		return sha256.Sum256([]byte(strings.ReplaceAll(b, "\n", "\r\n")))
	}
	t.Run("imaps", func(t *testing.T) {
		if got := bodyOf(p.readIMAP(t, "implicit", user, token)); got != want {
			t.Errorf("body read over IMAPS differs from the one sent")
		}
	})
	t.Run("pop3s", func(t *testing.T) {
		p.needProto(t, "pop3")
		c, err := p.dialPOP3(t, "pop3s", false, "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		if err := c.login(user, "pw"); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.find(token)
		if err != nil {
			t.Fatal(err)
		}
		if bodyOf(got) != want {
			t.Errorf("body read over POP3S differs from the one sent")
		}
		if err := c.quit(); err != nil {
			t.Fatal(err)
		}
	})
}
