package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"mailproxy/internal/demo"
	"mailproxy/proxy"
)

// [auth] mode = "http": an nginx-style auth_http service decides logins
// and may choose the backend.

// waits records the waits mailproxy asked for before failed-login
// replies, without waiting them (proxy.Options.LoginWait).
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) wait(_ context.Context, d time.Duration) {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
}

func (w *waits) take() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.d
	w.d = nil
	return d
}

func (w *waits) longest() time.Duration {
	var m time.Duration
	for _, d := range w.take() {
		m = max(m, d)
	}
	return m
}

// authService is a test auth_http service. alice's client password is
// "client pw%" (escaped on the wire), and the service sends her to mail2
// with the backend password "backendpw"; bob passes with his own password
// wherever routing puts him; carol is sent to an address outside the pool.
type authService struct {
	ports map[string]string // protocol -> mail2's port
	mu    sync.Mutex
	reqs  []http.Header
}

func (a *authService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.reqs = append(a.reqs, r.Header.Clone())
	a.mu.Unlock()
	user, pass, proto := r.Header.Get("Auth-User"), r.Header.Get("Auth-Pass"), r.Header.Get("Auth-Protocol")
	h := w.Header()
	switch {
	case user == "alice" && pass == "client%20pw%25":
		h.Set("Auth-Status", "OK")
		h.Set("Auth-Server", "127.0.0.1")
		h.Set("Auth-Port", a.ports[proto])
		h.Set("Auth-Pass", "backendpw")
	case user == "bob" && pass == "bobpw":
		h.Set("Auth-Status", "OK")
	case user == "carol":
		h.Set("Auth-Status", "OK")
		h.Set("Auth-Server", "127.0.0.1")
		h.Set("Auth-Port", "1")
	default:
		h.Set("Auth-Status", "Invalid login or password")
		h.Set("Auth-Wait", "3")
	}
}

func (a *authService) requests() []http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]http.Header(nil), a.reqs...)
}

func authHTTPConfig(url string, backends [][4]string) string {
	cfg := fmt.Sprintf(`[limits]
auth_failure_delay = "0s"

[auth]
mode = "http"
http_url = %q
http_timeout = "2s"
`, url) + strings.SplitN(oauthConfig(backends...), "\n\n", 2)[1]
	return cfg
}

// authHTTPBackends starts mail1 (bob) and mail2 (bob, and alice with the
// password only the auth service knows) with IMAP, POP3 and SMTP.
func authHTTPBackends(t *testing.T) [][4]string {
	var out [][4]string
	for _, name := range []string{"mail1", "mail2"} {
		users := map[string]string{"bob": "bobpw"}
		if name == "mail2" {
			users["alice"] = "backendpw"
		}
		_, imapAddr := imapBackend(t, name, users, nil)
		pop := demo.NewPOP3Server(name, users, nil)
		smtpSrv := demo.NewSMTPServer(name, demo.SMTPOptions{Users: users})
		out = append(out, [4]string{name, imapAddr, serveAddr(t, pop), serveAddr(t, smtpSrv)})
	}
	return out
}

func serveAddr(t *testing.T, s interface {
	Serve(net.Listener) error
	Close() error
}) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	t.Cleanup(func() { s.Close(); ln.Close(); <-done })
	return ln.Addr().String()
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestAuthHTTP(t *testing.T) {
	backs := authHTTPBackends(t)
	svc := &authService{ports: map[string]string{"imap": portOf(backs[1][1]), "pop3": portOf(backs[1][2]), "smtp": portOf(backs[1][3])}}
	hs := httptest.NewServer(svc)
	t.Cleanup(hs.Close)
	w := &waits{}
	e := startProxy(t, authHTTPConfig(hs.URL+"/auth", backs), func(o *proxy.Options) { o.LoginWait = w.wait })

	// IMAP: Auth-Server routing, with the service's backend password.
	c := dialIMAP(t, e, "plain", nil)
	if err := c.Login("alice", "client pw%").Wait(); err != nil {
		t.Fatalf("IMAP alice: %v", err)
	}
	if b, live, _, _ := e.Srv.Pool("main").Lookup(context.Background(), "alice"); b != "mail2" || live != 1 {
		t.Errorf("alice's binding = %s (%d live), want mail2 from Auth-Server", b, live)
	}
	h := svc.requests()[0]
	for k, v := range map[string]string{"Auth-Method": "plain", "Auth-User": "alice", "Auth-Pass": "client%20pw%25",
		"Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "127.0.0.1", "Auth-SSL": "off"} {
		if h.Get(k) != v {
			t.Errorf("request header %s = %q, want %q", k, h.Get(k), v)
		}
	}
	// bob: the service says OK without a server; routing decides, and
	// the second login comes from the cache.
	for range 2 {
		c := dialIMAP(t, e, "plain", nil)
		if err := c.Login("bob", "bobpw").Wait(); err != nil {
			t.Fatalf("IMAP bob: %v", err)
		}
		c.Close()
	}
	// A refusal waits the service's Auth-Wait.
	w.take()
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK")
	s.send("a LOGIN alice wrong\r\n")
	s.expect("a NO [AUTHENTICATIONFAILED]")
	if d := w.longest(); d != 3*time.Second {
		t.Errorf("failed login waited %v, want Auth-Wait 3s", d)
	}
	s.send("b LOGIN carol x\r\n")
	s.expect("b NO [UNAVAILABLE]")
	if !strings.Contains(e.Logs.String(), "Auth-Server 127.0.0.1:1 is not a imap backend of pool main") {
		t.Errorf("no clear error for an Auth-Server outside the pool")
	}

	// POP3: the same three, and Auth-Login-Attempt counts in the session.
	p := dialScript(t, e.Addr["pop3"])
	p.expect("+OK")
	p.send("USER alice\r\nPASS wrong\r\n")
	p.expect("+OK")
	p.expect("-ERR [AUTH]")
	if d := w.longest(); d != 3*time.Second {
		t.Errorf("POP3 failed login waited %v, want 3s", d)
	}
	p.send("USER carol\r\nPASS x\r\n")
	p.expect("+OK")
	p.expect("-ERR [SYS/TEMP]")
	p.send("USER alice\r\nPASS client pw%\r\n")
	p.expect("+OK")
	p.expect("+OK")
	reqs := svc.requests()
	if last := reqs[len(reqs)-1]; last.Get("Auth-Protocol") != "pop3" || last.Get("Auth-Login-Attempt") != "3" {
		t.Errorf("last request: protocol %q attempt %q, want pop3 3", last.Get("Auth-Protocol"), last.Get("Auth-Login-Attempt"))
	}

	// SMTP AUTH: the backend picked at EHLO is replaced by Auth-Server's
	// (only mail2 knows alice); round-robin starts one of them on mail1.
	for range 2 {
		m := dialSMTP(t, e, "smtp")
		if err := m.Auth(sasl.NewPlainClient("", "alice", "client pw%")); err != nil {
			t.Fatalf("SMTP alice: %v", err)
		}
		if _, err := sendSMTP(m, "alice@example.org", nil, []string{"bob@example.org"}, nil, "Subject: hi\r\n\r\nhi\r\n"); err != nil {
			t.Fatalf("SMTP send: %v", err)
		}
		m.Close()
	}
	m := dialSMTP(t, e, "smtp")
	err := m.Auth(sasl.NewPlainClient("", "alice", "wrong"))
	if code, _, _ := smtpCode(err); code != 535 {
		t.Errorf("SMTP wrong password: %v", err)
	}
	if d := w.longest(); d != 3*time.Second {
		t.Errorf("SMTP failed login waited %v, want 3s", d)
	}
	err = m.Auth(sasl.NewPlainClient("", "carol", "x"))
	if code, _, _ := smtpCode(err); code != 454 {
		t.Errorf("SMTP carol: %v, want 454", err)
	}

	var bob int
	for _, r := range svc.requests() {
		if r.Get("Auth-User") == "bob" {
			bob++
		}
	}
	if bob != 1 {
		t.Errorf("the service was asked about bob %d times, want 1 (cache)", bob)
	}
	for _, secret := range []string{"client pw%", "backendpw", "bobpw"} {
		if strings.Contains(e.Logs.String(), secret) {
			t.Errorf("log holds %q", secret)
		}
	}
}

// An auth service that cannot be reached, or answers nonsense, is a
// temporary failure and never a login.
func TestAuthHTTPUnavailable(t *testing.T) {
	backs := authHTTPBackends(t)
	for name, url := range map[string]string{"unreachable": closedURL(t), "bad reply": badService(t)} {
		t.Run(name, func(t *testing.T) {
			e := startProxy(t, authHTTPConfig(url, backs))
			c := dialIMAP(t, e, "plain", nil)
			if err := c.Login("bob", "bobpw").Wait(); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Errorf("IMAP: %v, want NO [UNAVAILABLE]", err)
			}
			p := dialScript(t, e.Addr["pop3"])
			p.expect("+OK")
			p.send("USER bob\r\nPASS bobpw\r\n")
			p.expect("+OK")
			p.expect("-ERR [SYS/TEMP]")
			m := dialSMTP(t, e, "smtp")
			err := m.Auth(sasl.NewPlainClient("", "bob", "bobpw"))
			if code, _, _ := smtpCode(err); code != 454 {
				t.Errorf("SMTP: %v, want 454", err)
			}
			if _, live, _, _ := e.Srv.Pool("main").Lookup(context.Background(), "bob"); live != 0 {
				t.Errorf("bob has %d live sessions", live)
			}
		})
	}
}

func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/auth"
}

func badService(t *testing.T) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Server", "127.0.0.1")
		w.Header().Set("Auth-Port", "not a port")
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}
