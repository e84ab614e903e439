package realmail

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// pop3Conn is a minimal POP3 client (RFC 1939, STLS from RFC 2595) with a
// deadline on every exchange.
type pop3Conn struct {
	nc net.Conn
	tp *textproto.Conn
}

// dialPOP3 connects to the listener (pop3: plain, STLS when stls; pop3s:
// implicit TLS) from the given loopback address and reads the greeting.
func (p *mailproxy) dialPOP3(t *testing.T, listener string, stls bool, from string) (*pop3Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", p.Addr[listener])
	if err != nil {
		return nil, err
	}
	cfg := p.clientTLS(t)
	if listener == "pop3s" {
		nc = tls.Client(nc, cfg)
	}
	c := &pop3Conn{nc: nc, tp: textproto.NewConn(nc)}
	if _, err := c.status(); err != nil {
		c.close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if stls {
		if _, err := c.cmd("STLS"); err != nil {
			c.close()
			return nil, err
		}
		tc := tls.Client(nc, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.close()
			return nil, fmt.Errorf("STLS handshake: %w", err)
		}
		c.nc, c.tp = tc, textproto.NewConn(tc)
	}
	return c, nil
}

// status reads one status line; -ERR is an error.
func (c *pop3Conn) status() (string, error) {
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := c.tp.ReadLine()
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(line, "+OK") {
		return line, fmt.Errorf("POP3 server said %q", line)
	}
	return line, nil
}

func (c *pop3Conn) cmd(format string, args ...any) (string, error) {
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.tp.PrintfLine(format, args...); err != nil {
		return "", err
	}
	line, err := c.status()
	if err != nil {
		return line, fmt.Errorf("%s: %w", strings.Fields(format)[0], err)
	}
	return line, nil
}

func (c *pop3Conn) login(user, pass string) error {
	if _, err := c.cmd("USER %s", user); err != nil {
		return err
	}
	_, err := c.cmd("PASS %s", pass)
	return err
}

// multi sends a command with a multi-line answer and returns its body.
func (c *pop3Conn) multi(format string, args ...any) (string, error) {
	if _, err := c.cmd(format, args...); err != nil {
		return "", err
	}
	b, err := c.tp.ReadDotBytes()
	return string(b), err
}

// find returns the number of the message whose text holds token.
func (c *pop3Conn) find(token string) (int, string, error) {
	list, err := c.multi("LIST")
	if err != nil {
		return 0, "", err
	}
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		var n, size int
		if _, err := fmt.Sscan(line, &n, &size); err != nil {
			continue
		}
		msg, err := c.multi("RETR %d", n)
		if err != nil {
			return 0, "", err
		}
		if strings.Contains(msg, token) {
			return n, msg, nil
		}
	}
	return 0, "", fmt.Errorf("no message with token %s in %d messages", token, strings.Count(list, "\n"))
}

func (c *pop3Conn) quit() error {
	_, err := c.cmd("QUIT")
	c.close()
	return err
}

func (c *pop3Conn) close() { c.nc.Close() }

// pop3Login logs user in and out through mailproxy and returns the error.
func (p *mailproxy) pop3Login(t *testing.T, user string) error {
	c, err := p.dialPOP3(t, "pop3", false, "")
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.login(user, "pw"); err != nil {
		return fmt.Errorf("%s: %w", user, err)
	}
	if _, err := c.cmd("STAT"); err != nil {
		return fmt.Errorf("%s: %w", user, err)
	}
	return c.quit()
}

// TestPOP3RoundRobin is issue 7 point 3: POP3 logins of users with no live
// session alternate between the two Dovecots, as Dovecot's logs show.
func TestPOP3RoundRobin(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	p.needProto(t, "pop3")
	us := users(150, 8)
	m := h.mark(t)
	for _, u := range us {
		if err := p.pop3Login(t, u); err != nil {
			t.Fatal(err)
		}
	}
	ls := h.waitLogins(t, m, "8 POP3 logins in the Dovecot logs", func(ls []login) bool { return len(ls) >= len(us) })
	where := map[string]string{}
	for _, l := range ls {
		if l.proto != "pop3" {
			t.Errorf("unexpected login: %s", l.line)
		}
		where[l.user] = l.inst
	}
	var seq []string
	for i, u := range us {
		seq = append(seq, where[u])
		if where[u] == "" {
			t.Fatalf("no Dovecot login line for %s", u)
		}
		if i > 0 && where[u] == where[us[i-1]] {
			t.Errorf("%s and %s both on dovecot-%s: logins do not alternate", us[i-1], u, where[u])
		}
		ends := p.waitSessionEnds(t, u, 1)
		if be := fmt.Sprint(ends[0]["backend"]); be != where[u] {
			t.Errorf("%s: mailproxy logged backend %s, Dovecot says dovecot-%s", u, be, where[u])
		}
	}
	t.Logf("POP3 logins landed on: %s", strings.Join(seq, " "))
}

// TestPOP3FollowsIMAP: a POP3 login of a user with a live IMAP session
// goes to that session's Dovecot (both touch the same index files), not
// round-robin.
func TestPOP3FollowsIMAP(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	p.needProto(t, "pop3")
	const user = "user60"
	m := h.mark(t)
	c, err := p.dialIMAP(t, "plain", user, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	imapOn := h.waitLogins(t, m, "the IMAP login of "+user, func(ls []login) bool { return len(ls) > 0 })[0].inst
	m = h.mark(t)
	for range 4 {
		if err := p.pop3Login(t, user); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range h.waitLogins(t, m, "4 POP3 logins", func(ls []login) bool { return len(ls) >= 4 }) {
		if l.inst != imapOn {
			t.Errorf("POP3 login on dovecot-%s while %s's IMAP session is on dovecot-%s:\n%s", l.inst, user, imapOn, l.line)
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}
