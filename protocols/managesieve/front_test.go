package managesieve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/sievefake"
	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	c, roots, err := mtls.SelfSigned("127.0.0.1", "localhost")
	if err != nil {
		panic(err)
	}
	return c, roots
})

func serverTLS() *tls.Config {
	c, _ := testCert()
	return &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
}

func clientTLS() *tls.Config {
	_, roots := testCert()
	return &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
}

// harness runs Handler.Serve on one loopback connection in front of a
// sievefake backend, and relays bytes after a login as the proxy would.
type harness struct {
	h     *Handler
	back  *sievefake.Server
	logs  *testkit.SyncBuffer
	dials int
	mu    sync.Mutex
	done  chan error // Serve's error, after the relay (if any) ended
}

type option func(*protocols.Session, *sievefake.Server)

func requireTLS(s *protocols.Session, _ *sievefake.Server) { s.TLS, s.RequireTLS = serverTLS(), true }
func withTLS(s *protocols.Session, _ *sievefake.Server)    { s.TLS = serverTLS() }

// start connects a client through the handler and reads the greeting.
func start(t *testing.T, opts ...option) (*sievefake.Client, *harness) {
	t.Helper()
	hs := &harness{h: &Handler{}, logs: &testkit.SyncBuffer{}, done: make(chan error, 1),
		back: &sievefake.Server{Name: "back1", Users: map[string]string{"alice": "pw", "bob": "s3cret"}, Sieve: "fileinto vacation regex"}}
	backAddr := testkit.Serve(t, hs.back)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &protocols.Session{ID: "test", Log: slog.New(slog.NewTextHandler(hs.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), MaxLine: 1024}
	s.Dial = func(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
		hs.mu.Lock()
		hs.dials++
		hs.mu.Unlock()
		c, err := net.DialTimeout("tcp", backAddr, time.Second)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := protocols.NewBackend(c, "back1", backAddr, nil)
		if err := hello(ctx, b); err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return b, nil
	}
	for _, o := range opts {
		o(s, hs.back)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			hs.done <- err
			return
		}
		defer c.Close()
		s.Conn = c
		r, err := hs.h.Serve(context.Background(), s)
		if r != nil {
			relay(r)
		}
		hs.done <- err
	}()
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cl, err := sievefake.NewClient(conn)
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return cl, hs
}

// relay copies both ways until either side ends, as the proxy does.
func relay(r *protocols.Relay) {
	defer r.Backend.Close()
	r.Backend.Write(r.ClientBuf)
	r.Client.Write(r.BackBuf)
	done := make(chan struct{}, 2)
	go func() { io.Copy(r.Backend, r.Client); done <- struct{}{} }()
	go func() { io.Copy(r.Client, r.Backend); done <- struct{}{} }()
	<-done
	r.Client.Close()
}

func (hs *harness) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-hs.done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func TestGreeting(t *testing.T) {
	cl, _ := start(t, withTLS)
	for k, want := range map[string]string{"SASL": "PLAIN LOGIN", "STARTTLS": "", "VERSION": "1.0", "IMPLEMENTATION": "mailproxy", "SIEVE": ""} {
		if got, ok := cl.Caps[k]; !ok || got != want {
			t.Errorf("capability %s = %q (%v), want %q", k, got, ok, want)
		}
	}
}

// TestGreetingLearnsBackend: after a probe, clients are told the
// backend's Sieve extensions and implementation, never its SASL or OWNER.
func TestGreetingLearnsBackend(t *testing.T) {
	back := &sievefake.Server{Name: "probed", Sieve: "fileinto imap4flags", Mechs: "PLAIN SCRAM-SHA-1"}
	addr := testkit.Serve(t, back)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	h := &Handler{}
	if err := h.Probe(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, cp := range h.backendCaps() {
		got = append(got, cp.wire())
	}
	want := `"IMPLEMENTATION" "sievefake probed"|"SIEVE" "fileinto imap4flags"|"VERSION" "1.0"`
	if strings.Join(got, "|") != want {
		t.Fatalf("learnt %s, want %s", strings.Join(got, "|"), want)
	}
}

func TestLogin(t *testing.T) {
	for _, tc := range []struct {
		name  string
		login func(*sievefake.Client) (*sievefake.Response, error)
	}{
		{"plain quoted", func(c *sievefake.Client) (*sievefake.Response, error) { return c.AuthPlain("alice", "pw", false) }},
		{"plain literal", func(c *sievefake.Client) (*sievefake.Response, error) { return c.AuthPlain("alice", "pw", true) }},
		{"login", func(c *sievefake.Client) (*sievefake.Response, error) { return c.AuthLogin("alice", "pw") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, hs := start(t)
			resp, err := tc.login(cl)
			if err != nil || resp.Err() != nil {
				t.Fatalf("login: %v %v", resp, err)
			}
			if err := cl.PutScript("vacation", "require \"vacation\";\r\nvacation \"away\";\r\n"); err != nil {
				t.Fatalf("PUTSCRIPT after login: %v", err)
			}
			if got, _ := hs.back.Script("alice", "vacation"); !strings.Contains(got, "away") {
				t.Fatalf("backend has %q", got)
			}
			cl.Logout()
			if err := hs.wait(t); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if strings.Contains(hs.logs.String(), "pw") {
				t.Fatalf("password in the log:\n%s", hs.logs)
			}
		})
	}
}

// TestPlainWithoutInitialResponse: the server asks with an empty string
// and the client answers with a string.
func TestPlainWithoutInitialResponse(t *testing.T) {
	cl, _ := start(t)
	cl.Send("AUTHENTICATE \"PLAIN\"\r\n")
	if _, raw, err := cl.ReadLine(); err != nil || raw != `""` {
		t.Fatalf("challenge %q, %v", raw, err)
	}
	resp, err := cl.Cmd(fmt.Sprintf("{%d+}\r\n%s", len(b64("\x00alice\x00pw")), b64("\x00alice\x00pw")))
	if err != nil || resp.Err() != nil {
		t.Fatalf("login: %+v %v", resp, err)
	}
}

func TestWrongPasswordThenRight(t *testing.T) {
	cl, hs := start(t)
	resp, err := cl.AuthPlain("alice", "wrong", false)
	if err != nil || resp.Status != "NO" || !strings.Contains(resp.Text, "Authentication failed") {
		t.Fatalf("wrong password: %+v %v", resp, err)
	}
	resp, err = cl.AuthPlain("alice", "pw", true)
	if err != nil || resp.Err() != nil {
		t.Fatalf("right password: %+v %v", resp, err)
	}
	if got := hs.back.Logins(); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("backend logins %v", got)
	}
}

func TestRequireTLS(t *testing.T) {
	cl, hs := start(t, requireTLS)
	if cl.Caps["SASL"] != "" {
		t.Fatalf("SASL %q offered before TLS", cl.Caps["SASL"])
	}
	resp, err := cl.AuthPlain("alice", "pw", false)
	if err != nil || resp.Status != "NO" || !strings.Contains(resp.Text, "ENCRYPT-NEEDED") {
		t.Fatalf("login before TLS: %+v %v", resp, err)
	}
	if err := cl.StartTLS(clientTLS()); err != nil {
		t.Fatal(err)
	}
	if cl.Caps["SASL"] != "PLAIN LOGIN" {
		t.Fatalf("SASL after TLS: %q", cl.Caps["SASL"])
	}
	if _, ok := cl.Caps["STARTTLS"]; ok {
		t.Fatal("STARTTLS offered again after TLS")
	}
	resp, err = cl.AuthPlain("alice", "pw", false)
	if err != nil || resp.Err() != nil {
		t.Fatalf("login after TLS: %+v %v", resp, err)
	}
	if hs.dials != 1 {
		t.Fatalf("%d dials", hs.dials)
	}
}

// TestStartTLSInjection: commands pipelined after STARTTLS in the same
// plaintext packet are thrown away, never run after the handshake.
func TestStartTLSInjection(t *testing.T) {
	cl, hs := start(t, withTLS)
	inject := `AUTHENTICATE "PLAIN" "` + b64("\x00alice\x00pw") + "\"\r\nNOOP \"injected\"\r\n"
	cl.Send("STARTTLS\r\n" + inject)
	resp, err := cl.ReadResponse()
	if err != nil || resp.Err() != nil {
		t.Fatalf("STARTTLS: %+v %v", resp, err)
	}
	tc := tls.Client(cl.Conn, clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	after, err := sievefake.NewClient(tc)
	if err != nil {
		t.Fatalf("capabilities after TLS: %v", err)
	}
	resp, err = after.Cmd(`NOOP "mine"`)
	if err != nil || resp.Err() != nil || !strings.Contains(resp.Text, `"mine"`) {
		t.Fatalf("first answer after TLS is %+v %v, want the reply to NOOP \"mine\"", resp, err)
	}
	if hs.dials != 0 || len(hs.back.Logins()) != 0 {
		t.Fatalf("the injected login reached a backend: %d dials, logins %v", hs.dials, hs.back.Logins())
	}
}

func TestNoopTagAndUnknown(t *testing.T) {
	cl, _ := start(t)
	resp, err := cl.Cmd(`NOOP "abc"`)
	if err != nil || resp.Text != `(TAG "abc") "NOOP completed."` {
		t.Fatalf("NOOP: %+v %v", resp, err)
	}
	resp, err = cl.Cmd(`LISTSCRIPTS`)
	if err != nil || resp.Status != "NO" {
		t.Fatalf("LISTSCRIPTS before login: %+v %v", resp, err)
	}
	if err := cl.Capability(); err != nil || cl.Caps["SASL"] != "PLAIN LOGIN" {
		t.Fatalf("CAPABILITY: %v %v", cl.Caps, err)
	}
}

// TestBoundedInput: a line over the limit is refused, a literal over it
// ends the session, and ten bad commands end it too.
func TestBoundedInput(t *testing.T) {
	cl, hs := start(t)
	resp, err := cl.Cmd("NOOP \"" + strings.Repeat("x", 2000) + "\"")
	if err != nil || resp.Status != "NO" || !strings.Contains(resp.Text, "too long") {
		t.Fatalf("long line: %+v %v", resp, err)
	}
	cl.Send("AUTHENTICATE \"PLAIN\" {5000+}\r\n")
	resp, err = cl.ReadResponse()
	if err != nil || resp.Status != "BYE" {
		t.Fatalf("big literal: %+v %v", resp, err)
	}
	hs.wait(t)

	cl, hs = start(t)
	for i := range maxErrors {
		resp, err := cl.Cmd("BOGUS")
		want := "NO"
		if i == maxErrors-1 {
			want = "BYE"
		}
		if err != nil || resp.Status != want {
			t.Fatalf("bad command %d: %+v %v", i+1, resp, err)
		}
	}
	if err := hs.wait(t); err != errTooManyErrors {
		t.Fatalf("Serve: %v", err)
	}
}

func TestCancelAndBadBase64(t *testing.T) {
	cl, hs := start(t)
	cl.Send("AUTHENTICATE \"LOGIN\"\r\n")
	if _, raw, err := cl.ReadLine(); err != nil || raw != `"`+b64("Username:")+`"` {
		t.Fatalf("challenge %q, %v", raw, err)
	}
	resp, err := cl.Cmd(`"*"`)
	if err != nil || resp.Status != "NO" || !strings.Contains(resp.Text, "cancelled") {
		t.Fatalf("cancel: %+v %v", resp, err)
	}
	resp, err = cl.Cmd(`AUTHENTICATE "PLAIN" "!!!"`)
	if err != nil || resp.Status != "NO" {
		t.Fatalf("bad base64: %+v %v", resp, err)
	}
	resp, err = cl.Cmd(`AUTHENTICATE "CRAM-MD5"`)
	if err != nil || resp.Status != "NO" {
		t.Fatalf("unknown mechanism: %+v %v", resp, err)
	}
	if hs.dials != 0 {
		t.Fatalf("%d dials", hs.dials)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// refuseGuard is a LoginGuard that refuses every login attempt.
type refuseGuard struct{ failed int }

func (g *refuseGuard) Allow(context.Context, string) error { return protocols.ErrLoginRefused }
func (g *refuseGuard) Failed(context.Context, string)      { g.failed++ }
func (g *refuseGuard) Succeeded(string)                    {}

// TestLoginGuard: a client or user that failed too often is refused before
// any backend is contacted, with a temporary failure.
func TestLoginGuard(t *testing.T) {
	cl, hs := start(t, func(s *protocols.Session, _ *sievefake.Server) { s.Guard = &refuseGuard{} })
	resp, err := cl.AuthPlain("alice", "pw", false)
	if err != nil || resp.Status != "NO" || !strings.Contains(resp.Text, "TRYLATER") {
		t.Fatalf("login: %+v %v", resp, err)
	}
	if hs.dials != 0 {
		t.Fatalf("%d dials", hs.dials)
	}
}
