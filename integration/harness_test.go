// Package integration tests the built system end to end: mailproxy with
// its real protocol handlers in front of fake backends on 127.0.0.1:0,
// driven by real client libraries.
package integration

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/protocols/lmtp"
	"mailproxy/protocols/managesieve"
	"mailproxy/protocols/pop3"
	"mailproxy/protocols/smtp"
	"mailproxy/proxy"
	mtls "mailproxy/tls"
)

// handlers are the protocol implementations under test, wired as
// cmd/mailproxy wires them.
func handlers() map[string]protocols.Handler {
	return map[string]protocols.Handler{"imap": imap.Handler{}, "pop3": pop3.Handler{}, "smtp": smtp.Handler{},
		"lmtp": lmtp.Handler{}, "managesieve": &managesieve.Handler{}}
}

// env is one running mailproxy under test.
type env struct {
	t     *testing.T
	Srv   *proxy.Server
	Cfg   *config.Config
	Addr  map[string]string   // listener name -> real address
	Logs  *testkit.SyncBuffer // everything logged, at debug level
	Roots *x509.CertPool      // trusts the proxy's certificate
	Cert  tls.Certificate
}

// testCert is one throwaway certificate per test binary.
var testCert = sync.OnceValues(func() (struct {
	cert  tls.Certificate
	roots *x509.CertPool
}, error) {
	c, roots, err := mtls.SelfSigned("127.0.0.1", "localhost")
	return struct {
		cert  tls.Certificate
		roots *x509.CertPool
	}{c, roots}, err
})

// startProxy parses config (TOML), opens a 127.0.0.1:0 listener for each
// [[listener]] (whatever address the text gives; use distinct dummy ports
// such as "127.0.0.1:1"), starts the server and its health checks, and
// stops everything when the test ends. A [tls] section is added when the
// text has none; the certificate is generated.
//
// opts, when given, adjust the proxy's options before it is built.
func startProxy(t *testing.T, text string, opts ...func(*proxy.Options)) *env {
	t.Helper()
	tc, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "[tls]") {
		text = "[tls]\ncert = \"generated.pem\"\nkey = \"generated.pem\"\n" + text
	}
	if !strings.Contains(text, "[admin]") {
		text = "[admin]\nlisten = \"\"\n" + text
	}
	cfg, err := config.Parse([]byte(text), t.Name())
	if err != nil {
		t.Fatalf("text: %v", err)
	}
	e := &env{t: t, Cfg: cfg, Addr: map[string]string{}, Logs: &testkit.SyncBuffer{}, Roots: tc.roots, Cert: tc.cert}
	log := slog.New(slog.NewTextHandler(e.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	po := proxy.Options{Logger: log, Handlers: handlers(), Certs: mtls.StaticCertStore(tc.cert)}
	for _, o := range opts {
		o(&po)
	}
	e.Srv, err = proxy.New(cfg, po)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	e.Srv.StartBackground()
	var wg sync.WaitGroup
	for _, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		e.Addr[l.Name] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Srv.Serve(l.Name, ln); !errors.Is(err, proxy.ErrServerClosed) {
				t.Errorf("Serve(%s): %v", l.Name, err)
			}
		}()
	}
	t.Cleanup(func() {
		e.Srv.Close()
		wg.Wait()
		if t.Failed() {
			t.Logf("proxy log:\n%s", e.Logs.String())
		}
	})
	return e
}

// ClientTLS is a client config that trusts the proxy.
func (e *env) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: e.Roots, ServerName: "127.0.0.1"}
}

// imapBackend starts an in-memory IMAP backend called name with users on
// 127.0.0.1:0 and returns it with its address. tlsCfg enables STARTTLS.
func imapBackend(t *testing.T, name string, users map[string]string, tlsCfg *tls.Config) (*demo.IMAPServer, string) {
	t.Helper()
	b := demo.NewIMAPServer(name, users, tlsCfg)
	return b, testkit.Serve(t, b)
}

// waitFor polls cond until it holds or the deadline passes. It is for
// state that has no event to wait on (a counter in another process).
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !testkit.Eventually(d, 5*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// script is a raw protocol conversation with a deadline on every read.
type script struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialScript(t *testing.T, addr string) *script {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &script{t: t, conn: c, r: bufio.NewReader(c)}
}

// send writes raw bytes (the caller adds CRLF).
func (s *script) send(raw string) {
	s.t.Helper()
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(s.conn, raw); err != nil {
		s.t.Fatalf("send %q: %v", raw, err)
	}
}

// expect reads one line and checks it starts with prefix.
func (s *script) expect(prefix string) string {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("expecting %q: %v (got %q)", prefix, err, line)
	}
	if !strings.HasPrefix(line, prefix) {
		s.t.Fatalf("expected a line starting %q, got %q", prefix, line)
	}
	return strings.TrimRight(line, "\r\n")
}

// expectClosed checks that the server closes the connection.
func (s *script) expectClosed() {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(s.r)
	if err != nil {
		s.t.Fatalf("expected close, got %v after %q", err, rest)
	}
}

// upgrade does the client side of a TLS handshake on the script's
// connection and resets the reader.
func (s *script) upgrade(cfg *tls.Config) {
	s.t.Helper()
	tc := tls.Client(s.conn, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		s.t.Fatalf("tls handshake: %v", err)
	}
	s.conn = tc
	s.r = bufio.NewReader(tc)
}

func users(n int, prefix string) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("%s%d", prefix, i)] = "pw"
	}
	return m
}
