package realmail

import (
	"errors"
	"net"
	"net/smtp"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// TestWrongPassword: Dovecot's and Postfix's refusals reach the client as
// protocol errors, and a refused login is not a backend failure: no
// backend goes down, and the next login with the right password works.
// Each protocol's client has its own address: Dovecot's auth penalty
// grows per client address (which it knows through forward_client), so
// failures from one address would slow down the others.
func TestWrongPassword(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	const user = "user70"
	t.Run("refused", func(t *testing.T) {
		t.Run("imap", func(t *testing.T) {
			t.Parallel()
			c, err := p.dialIMAPWith(t, "plain", user, "wrong", "127.0.0.21", nil)
			if err == nil {
				c.Close()
				t.Fatal("IMAP login with a wrong password succeeded")
			}
			if !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
				t.Errorf("IMAP login with a wrong password: %v, want NO [AUTHENTICATIONFAILED]", err)
			}
		})
		t.Run("pop3", func(t *testing.T) {
			t.Parallel()
			p.needProto(t, "pop3")
			c, err := p.dialPOP3(t, "pop3", false, "127.0.0.22")
			if err != nil {
				t.Fatal(err)
			}
			err = c.login(user, "wrong")
			c.close()
			if err == nil || !strings.Contains(err.Error(), "-ERR") {
				t.Errorf("POP3 login with a wrong password: %v, want -ERR", err)
			}
		})
		t.Run("smtp-auth", func(t *testing.T) {
			t.Parallel()
			p.needProto(t, "smtp")
			err := p.smtpAuth(t, "submission", "127.0.0.23", user, "wrong")
			var tpe *textproto.Error
			if !errors.As(err, &tpe) || tpe.Code != 535 {
				t.Errorf("SMTP AUTH with a wrong password: %v, want 535", err)
			}
		})
	})
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		for _, be := range instances {
			if p.backendDown(be, proto) {
				t.Errorf("mailproxy took %s down for %s after wrong passwords", be, proto)
			}
		}
	}
	c, err := p.dialIMAP(t, "plain", user, "")
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
	if p.has("pop3") {
		if err := p.pop3Login(t, user); err != nil {
			t.Fatal(err)
		}
	}
	if p.has("smtp") {
		if err := p.smtpAuth(t, "submission", "", user, "pw"); err != nil {
			t.Fatal(err)
		}
	}
}

// smtpAuth only authenticates (STARTTLS, AUTH PLAIN) and quits.
func (p *mailproxy) smtpAuth(t *testing.T, listener, from, user, pass string) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", p.Addr[listener])
	if err != nil {
		return err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(nc, "127.0.0.1")
	if err != nil {
		nc.Close()
		return err
	}
	defer c.Close()
	if err := c.StartTLS(p.clientTLS(t)); err != nil {
		return err
	}
	if err := c.Auth(smtp.PlainAuth("", user, pass, "127.0.0.1")); err != nil {
		return err
	}
	return c.Quit()
}
