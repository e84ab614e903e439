package realmail

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

// introspection is the OAuth 2.0 token introspection service (RFC 7662)
// that Dovecot's oauth2 passdb asks (start.sh points it at
// OAUTH2_INTROSPECTION_PORT): a token is active for the user it belongs to.
type introspection struct {
	tokens map[string]string // token -> user
	mu     sync.Mutex
	asked  []string
}

func (s *introspection) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := r.PostFormValue("token")
	s.mu.Lock()
	s.asked = append(s.asked, tok)
	s.mu.Unlock()
	user, ok := s.tokens[tok]
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"active": ok, "username": user})
}

func (s *introspection) seen(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.asked {
		if a == tok {
			return true
		}
	}
	return false
}

func startIntrospection(t *testing.T, addr string, tokens map[string]string) *introspection {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("introspection service on %s: %v", addr, err)
	}
	s := &introspection{tokens: tokens}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func bearerIR(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01host=127.0.0.1\x01auth=Bearer " + token + "\x01\x01"))
}

// smtpOAuthBearer is OAUTHBEARER for net/smtp's client; a refusal's JSON
// challenge is answered with the dummy %x01.
type smtpOAuthBearer struct{ user, token string }

func (a smtpOAuthBearer) Start(*smtp.ServerInfo) (string, []byte, error) {
	ir, _ := base64.StdEncoding.DecodeString(bearerIR(a.user, a.token))
	return "OAUTHBEARER", ir, nil
}

func (a smtpOAuthBearer) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return []byte{1}, nil
	}
	return nil, nil
}

// TestOAuthBearerDovecot: OAUTHBEARER through mailproxy to real Dovecot,
// whose oauth2 passdb checks the token with the introspection service;
// mailproxy only routes by the user named in the message.
func TestOAuthBearerDovecot(t *testing.T) {
	h := need(t)
	intro := startIntrospection(t, "127.0.0.1:"+h.get(t, "OAUTH2_INTROSPECTION_PORT"),
		map[string]string{"tok-81": "user81", "tok-82": "user82"})
	p := startProxy(t, h, proxyOptions{})
	// The health checks ask Dovecot for its mechanisms; then mailproxy
	// offers them.
	poll(t, 10*time.Second, "mailproxy offers AUTH=OAUTHBEARER", func() bool {
		c, err := net.DialTimeout("tcp", p.Addr["imap"], 2*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.Contains(line, "AUTH=OAUTHBEARER") && strings.Contains(line, "AUTH=XOAUTH2")
	})

	t.Run("imap", func(t *testing.T) {
		c, err := imapclient.DialInsecure(p.Addr["imap"], &imapclient.Options{TLSConfig: p.clientTLS(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Authenticate(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "user81", Token: "tok-81", Host: "127.0.0.1"})); err != nil {
			t.Fatalf("OAUTHBEARER user81: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT after OAUTHBEARER: %v", err)
		}
		if !intro.seen("tok-81") {
			t.Error("Dovecot never asked the introspection service about the token")
		}
		// A second session with XOAUTH2 goes where the first is.
		s := rawDial(t, p.Addr["imap"])
		s.expect(t, "* OK")
		s.send(t, "a AUTHENTICATE XOAUTH2 "+base64.StdEncoding.EncodeToString([]byte("user=user81\x01auth=Bearer tok-81\x01\x01")))
		s.expect(t, "a OK")
		where := h.whoUsers(t, map[string]bool{"user81": true})
		if n := where["a"]["user81"] + where["b"]["user81"]; n != 2 || (where["a"]["user81"] != 0 && where["b"]["user81"] != 0) {
			t.Errorf("user81's sessions per Dovecot: %v, want both on one", where)
		}
		// A token Dovecot refuses: its error challenge reaches the client,
		// the dummy reply reaches Dovecot, and its NO the client.
		s = rawDial(t, p.Addr["imap"])
		s.expect(t, "* OK")
		s.send(t, "b AUTHENTICATE OAUTHBEARER "+bearerIR("user82", "stale"))
		line := s.expect(t, "+ ")
		js, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(line, "+ "))
		if err != nil || !strings.Contains(string(js), `"status"`) {
			t.Errorf("challenge %q (%s), want Dovecot's JSON error", line, js)
		}
		s.send(t, "AQ==")
		s.expect(t, "b NO")
		s.send(t, "c AUTHENTICATE OAUTHBEARER "+bearerIR("user82", "tok-82"))
		s.expect(t, "c OK")
	})

	t.Run("pop3", func(t *testing.T) {
		p.needProto(t, "pop3")
		c, err := p.dialPOP3(t, "pop3", false, "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		if _, err := c.cmd("AUTH OAUTHBEARER %s", bearerIR("user81", "tok-81")); err != nil {
			t.Fatalf("POP3 OAUTHBEARER: %v", err)
		}
		if _, err := c.cmd("STAT"); err != nil {
			t.Fatal(err)
		}
		c.quit()
	})

	t.Run("submission", func(t *testing.T) {
		p.needProto(t, "smtp")
		err := p.smtpAuthWith(t, "submission", smtpOAuthBearer{"user82", "tok-82"})
		if err != nil {
			t.Fatalf("SMTP OAUTHBEARER: %v", err)
		}
		err = p.smtpAuthWith(t, "submission", smtpOAuthBearer{"user82", "stale"})
		var tpe *textproto.Error
		if !errors.As(err, &tpe) || tpe.Code != 535 {
			t.Errorf("SMTP OAUTHBEARER with a stale token: %v, want 535", err)
		}
	})
}

// smtpAuthWith is smtpAuth with any net/smtp mechanism.
func (p *mailproxy) smtpAuthWith(t *testing.T, listener string, a smtp.Auth) error {
	nc, err := net.DialTimeout("tcp", p.Addr[listener], 5*time.Second)
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
	if err := c.Auth(a); err != nil {
		return err
	}
	return c.Quit()
}

// raw is a line-by-line IMAP conversation with a deadline on every read.
type raw struct {
	c net.Conn
	r *bufio.Reader
}

func rawDial(t *testing.T, addr string) *raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw{c: c, r: bufio.NewReader(c)}
}

func (s *raw) send(t *testing.T, line string) {
	t.Helper()
	s.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.c.Write([]byte(line + "\r\n")); err != nil {
		t.Fatal(err)
	}
}

func (s *raw) expect(t *testing.T, prefix string) string {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		t.Fatalf("expected %q, got %q (%v)", prefix, line, err)
	}
	return strings.TrimRight(line, "\r\n")
}
