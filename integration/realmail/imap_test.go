package realmail

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// dialIMAP logs user in through mailproxy. mode is plain, starttls or
// implicit; from is the client's source address on loopback ("" = any),
// so a test can tell the client's address from mailproxy's own.
func (p *mailproxy) dialIMAP(t *testing.T, mode, user, from string) (*imapclient.Client, error) {
	t.Helper()
	return p.dialIMAPPush(t, mode, user, from, nil)
}

// dialIMAPPass logs in over plain IMAP with the given password.
func (p *mailproxy) dialIMAPPass(t *testing.T, user, pass string) (*imapclient.Client, error) {
	return p.dialIMAPWith(t, "plain", user, pass, "", nil)
}

// dialIMAPPush is dialIMAP with a handler for unsolicited responses.
func (p *mailproxy) dialIMAPPush(t *testing.T, mode, user, from string, push *imapclient.UnilateralDataHandler) (*imapclient.Client, error) {
	return p.dialIMAPWith(t, mode, user, "pw", from, push)
}

func (p *mailproxy) dialIMAPWith(t *testing.T, mode, user, pass, from string, push *imapclient.UnilateralDataHandler) (*imapclient.Client, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	opts := &imapclient.Options{
		Dialer:                d,
		TLSConfig:             p.clientTLS(t),
		UnilateralDataHandler: push,
	}
	var c *imapclient.Client
	var err error
	switch mode {
	case "plain":
		c, err = imapclient.DialInsecure(p.Addr["imap"], opts)
	case "starttls":
		c, err = imapclient.DialStartTLS(p.Addr["imap"], opts)
	case "implicit":
		c, err = imapclient.DialTLS(p.Addr["imaps"], opts)
	default:
		panic(mode)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s for %s: %w", mode, user, err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s (%s): %w", user, mode, err)
	}
	return c, nil
}

// readIMAP logs user in, finds the message with token in INBOX and returns
// its full text; it logs out.
func (p *mailproxy) readIMAP(t *testing.T, mode, user, token string) string {
	t.Helper()
	c, err := p.dialIMAP(t, mode, user, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("%s: SELECT INBOX: %v", user, err)
	}
	sd, err := c.UIDSearch(&goimap.SearchCriteria{
		Header: []goimap.SearchCriteriaHeaderField{{Key: "X-Realmail-Token", Value: token}},
	}, nil).Wait()
	if err != nil {
		t.Fatalf("%s: UID SEARCH: %v", user, err)
	}
	uids := sd.AllUIDs()
	if len(uids) != 1 {
		t.Fatalf("%s: UID SEARCH for token %s found %v, want one message", user, token, uids)
	}
	section := &goimap.FetchItemBodySection{}
	msgs, err := c.Fetch(goimap.UIDSetNum(uids...), &goimap.FetchOptions{BodySection: []*goimap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("%s: UID FETCH %v: %v (%d messages)", user, uids, err, len(msgs))
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("%s: LOGOUT: %v", user, err)
	}
	return string(msgs[0].FindBodySection(section))
}

// TestIMAPStickyFiftyUsers is issue 7 point 2: 50 users with 3 concurrent
// IMAP sessions each, opened all at once. Dovecot's own view (doveadm who
// on each instance) must show every user on exactly one instance with all
// three sessions, and both instances serving users.
func TestIMAPStickyFiftyUsers(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	us := users(100, 50)
	const per = 3

	var mu sync.Mutex
	var clients []*imapclient.Client
	var errs []error
	var wg sync.WaitGroup
	modes := []string{"plain", "starttls", "implicit"}
	for _, u := range us {
		for i := range per {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := p.dialIMAP(t, modes[i], u, "")
				if err == nil {
					// SELECT makes the imap process open the user's indexes:
					// what two backends must never do at once.
					_, err = c.Select("INBOX", nil).Wait()
				}
				mu.Lock()
				defer mu.Unlock()
				if c != nil {
					clients = append(clients, c)
				}
				if err != nil {
					errs = append(errs, err)
				}
			}()
		}
	}
	wg.Wait()
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}

	want := set(us)
	var seen map[string]map[string]int
	poll(t, 15*time.Second, "doveadm who to list all 150 sessions", func() bool {
		seen = h.whoUsers(t, want)
		n := 0
		for _, byUser := range seen {
			for _, c := range byUser {
				n += c
			}
		}
		return n >= len(us)*per
	})
	for _, u := range us {
		var on []string
		for _, inst := range instances {
			if n := seen[inst][u]; n > 0 {
				on = append(on, fmt.Sprintf("dovecot-%s (%d sessions)", inst, n))
			}
			if n := seen[inst][u]; n != 0 && n != per {
				t.Errorf("%s has %d sessions on dovecot-%s, want %d", u, n, inst, per)
			}
		}
		if len(on) != 1 {
			t.Errorf("%s is on %s, want exactly one instance", u, strings.Join(on, " and "))
		}
	}
	for _, inst := range instances {
		if len(seen[inst]) == 0 {
			t.Errorf("dovecot-%s serves none of the 50 users: the pool is not balanced", inst)
		}
	}
	t.Logf("doveadm who: dovecot-a has %d users, dovecot-b %d users, %d sessions each", len(seen["a"]), len(seen["b"]), per)

	for _, c := range clients {
		if err := c.Logout().Wait(); err != nil {
			t.Errorf("LOGOUT: %v", err)
		}
	}
	poll(t, 15*time.Second, "doveadm who to show the users gone", func() bool {
		seen = h.whoUsers(t, want)
		return len(seen["a"])+len(seen["b"]) == 0
	})
}

// TestIMAPIdlePush: a client in IDLE through mailproxy (implicit TLS)
// hears of a message as soon as Postfix delivers it, pushed by Dovecot
// through the relay.
func TestIMAPIdlePush(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	const user = "user40"
	exists := make(chan uint32, 16)
	c, err := p.dialIMAPPush(t, "implicit", user, "", &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	token := newToken()
	if p.has("smtp") {
		err = p.sendSMTP(t, "smtp", "", "", token, user)
	} else {
		var out string
		out, err = run(t, 30*time.Second, "swaks", "--server", h.addr(t, "POSTFIX_SMTP_PORT"), "--to", user+"@example.test",
			"--header", "X-Realmail-Token: "+token, "--body", "token "+token)
		if err != nil {
			err = fmt.Errorf("%v\n%s", err, out)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n <= sel.NumMessages {
			t.Errorf("EXISTS %d after %d messages", n, sel.NumMessages)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no EXISTS in IDLE within 30s of the delivery")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestForwardClient checks forward_client = true end to end: Dovecot
// (login_trusted_networks) and Postfix (smtpd_authorized_xclient_hosts)
// must see the client's own address, not mailproxy's. The client connects
// from another loopback address (127.0.0.x) than mailproxy uses towards
// the backends (127.0.0.1), so the two can be told apart.
func TestForwardClient(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})

	t.Run("imap", func(t *testing.T) {
		const from, user = "127.0.0.9", "user20"
		m := h.mark(t)
		c, err := p.dialIMAP(t, "plain", user, from)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ls := h.waitLogins(t, m, "Dovecot's login line for "+user, func(ls []login) bool { return len(ls) > 0 })
		if len(ls) != 1 || ls[0].user != user {
			t.Fatalf("Dovecot logins since the mark: %v, want one of %s", ls, user)
		}
		l := ls[0]
		if l.rip != from {
			t.Errorf("dovecot-%s logged rip=%s, want the client's %s:\n%s", l.inst, l.rip, from, l.line)
		}
		ws, err := h.who(t, l.inst)
		if err != nil {
			t.Fatal(err)
		}
		if !containsWho(ws, user, from) {
			t.Errorf("doveadm who on dovecot-%s = %v, want %s from %s", l.inst, ws, user, from)
		}
		if err := c.Logout().Wait(); err != nil {
			t.Fatal(err)
		}
		// x-session-ext-id: Dovecot takes mailproxy's session id as its own,
		// so one id finds a session in both logs.
		ends := p.waitSessionEnds(t, user, 1)
		if id := fmt.Sprint(ends[0]["session"]); id != l.session {
			t.Errorf("Dovecot session=<%s>, mailproxy session %s: x-session-ext-id not used", l.session, id)
		}
		if be := fmt.Sprint(ends[0]["backend"]); be != l.inst {
			t.Errorf("mailproxy logged backend %s, Dovecot says dovecot-%s", be, l.inst)
		}
		t.Logf("Dovecot: %s", l.line)
	})

	t.Run("pop3", func(t *testing.T) {
		p.needProto(t, "pop3")
		const from, user = "127.0.0.10", "user21"
		m := h.mark(t)
		c, err := p.dialPOP3(t, "pop3", false, from)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		if err := c.login(user, "pw"); err != nil {
			t.Fatal(err)
		}
		ls := h.waitLogins(t, m, "Dovecot's login line for "+user, func(ls []login) bool { return len(ls) > 0 })
		if ls[0].rip != from {
			t.Errorf("dovecot-%s logged rip=%s, want the client's %s (XCLIENT ADDR):\n%s", ls[0].inst, ls[0].rip, from, ls[0].line)
		}
		if err := c.quit(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Dovecot: %s", ls[0].line)
	})

	t.Run("smtp", func(t *testing.T) {
		p.needProto(t, "smtp")
		const from = "127.0.0.11"
		m := h.mark(t)
		token := newToken()
		if err := p.sendSMTP(t, "smtp", from, "", token, "user22"); err != nil {
			t.Fatal(err)
		}
		h.delivered(t, token, "user22")
		var hit string
		poll(t, 10*time.Second, "Postfix to log the forwarded client", func() bool {
			for _, line := range h.since(t, m, "postfix") {
				if strings.Contains(line, "client=") && strings.Contains(line, "["+from+"]") {
					hit = line
					return true
				}
			}
			return false
		})
		t.Logf("Postfix: %s", hit)
	})
}

func containsWho(ws []who, user, ip string) bool {
	for _, w := range ws {
		if w.user == user && w.ip == ip {
			return true
		}
	}
	return false
}

// TestBackendSTARTTLS runs mailproxy with tls = "starttls" towards every
// backend, verified against the harness certificate. Loopback counts as
// secured for Dovecot, so a plaintext login would work too: the proof is
// in the servers' logs (Dovecot's login line says TLS instead of secured;
// Postfix counts a starttls command in the session).
func TestBackendSTARTTLS(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{backendTLS: "starttls"})

	t.Run("imap", func(t *testing.T) {
		m := h.mark(t)
		c, err := p.dialIMAP(t, "plain", "user30", "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		l := h.waitLogins(t, m, "the login of user30", func(ls []login) bool { return len(ls) > 0 })[0]
		if !strings.Contains(l.line, ", TLS,") {
			t.Errorf("Dovecot's login line has no TLS:\n%s", l.line)
		}
		if err := c.Logout().Wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pop3", func(t *testing.T) {
		p.needProto(t, "pop3")
		m := h.mark(t)
		if err := p.pop3Login(t, "user31"); err != nil {
			t.Fatal(err)
		}
		l := h.waitLogins(t, m, "the login of user31", func(ls []login) bool { return len(ls) > 0 })[0]
		if !strings.Contains(l.line, ", TLS,") {
			t.Errorf("Dovecot's login line has no TLS:\n%s", l.line)
		}
	})
	t.Run("smtp", func(t *testing.T) {
		p.needProto(t, "smtp")
		const from = "127.0.0.12"
		m := h.mark(t)
		token := newToken()
		if err := p.sendSMTP(t, "smtp", from, "", token, "user32"); err != nil {
			t.Fatal(err)
		}
		h.delivered(t, token, "user32")
		// smtpd_tls_loglevel is 0: the session's command counts say
		// starttls=1, and XCLIENT after STARTTLS still names the client.
		var hit string
		poll(t, 10*time.Second, "Postfix's disconnect line for "+from, func() bool {
			for _, line := range h.since(t, m, "postfix") {
				if strings.Contains(line, "disconnect from unknown["+from+"]") {
					hit = line
					return true
				}
			}
			return false
		})
		if !strings.Contains(hit, " starttls=1 ") {
			t.Errorf("Postfix's session had no STARTTLS:\n%s", hit)
		}
	})
}
