package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

// timeout bounds every read and write of the tests.
const timeout = 5 * time.Second

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

// listen serves fn for every connection on a 127.0.0.1:0 listener until
// the test ends.
func listen(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); fn(c) }()
		}
	}()
	return ln.Addr().String()
}

// demoBackend runs a demo POP3 server with users on 127.0.0.1:0.
func demoBackend(t *testing.T, users map[string]string, opts func(*demo.POP3Server)) (*demo.POP3Server, string) {
	t.Helper()
	s := demo.NewPOP3Server("fake", users, nil)
	if opts != nil {
		opts(s)
	}
	return s, testkit.Serve(t, s)
}

// scripted is a raw backend: it greets with greeting and answers each line
// with answer(line), recording the lines. answer returns "" to close.
type scripted struct {
	mu    sync.Mutex
	lines []string
}

func (sc *scripted) Lines() []string {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return append([]string(nil), sc.lines...)
}

func scriptedBackend(t *testing.T, greeting string, answer func(line string) string) (*scripted, string) {
	sc := &scripted{}
	addr := listen(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(timeout))
		if greeting == "" {
			return
		}
		io.WriteString(c, greeting+"\r\n")
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			sc.mu.Lock()
			sc.lines = append(sc.lines, line)
			sc.mu.Unlock()
			a := answer(line)
			if a == "" {
				return
			}
			io.WriteString(c, a)
		}
	})
	return sc, addr
}

// env runs Handler.Serve for client connections, with Session.Dial going
// to one backend address, and a small relay after login.
type env struct {
	t       *testing.T
	backend string
	logs    *testkit.SyncBuffer
	dials   atomic.Int32
	fails   atomic.Int32
	mod     func(*protocols.Session)
	mkBack  func(*protocols.Backend) // adjusts each backend before hello
	dialErr error                    // Dial fails with this when set
}

func newEnv(t *testing.T, backend string) *env {
	return &env{t: t, backend: backend, logs: &testkit.SyncBuffer{}}
}

func (e *env) dial(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
	e.dials.Add(1)
	if e.dialErr != nil {
		return nil, e.dialErr
	}
	c, err := net.DialTimeout("tcp", e.backend, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	b := protocols.NewBackend(c, "fake", e.backend, nil)
	b.Fail = func(string) { e.fails.Add(1) }
	if e.mkBack != nil {
		e.mkBack(b)
	}
	if err := hello(ctx, b); err != nil {
		if !errors.Is(err, protocols.ErrClientFault) { // as Session.Dial charges it
			b.Fail("hello: " + err.Error())
		}
		b.Close()
		return nil, err
	}
	return b, nil
}

// result is what one Serve returned.
type result struct {
	relay bool
	err   error
}

// connect starts a session and returns the client's end and a channel
// with Serve's result (sent after the relay, if any, ended).
func (e *env) connect() (*client, <-chan result) {
	t := e.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.DialTimeout("tcp", ln.Addr().String(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.SetDeadline(time.Now().Add(timeout))
	s := &protocols.Session{
		ID: "test", Conn: sc, TLS: serverTLS(), MaxLine: 1024, Dial: e.dial,
		Log: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if e.mod != nil {
		e.mod(s)
	}
	done := make(chan result, 1)
	finished := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(finished)
		defer cancel()
		relay, err := Handler{}.Serve(ctx, s)
		if relay != nil {
			miniRelay(relay)
		}
		sc.Close()
		done <- result{relay != nil, err}
	}()
	cl := &client{t: t, c: cc, r: bufio.NewReader(cc)}
	t.Cleanup(func() { cc.Close(); cancel(); <-finished })
	return cl, done
}

// miniRelay copies both ways until either side ends, as the proxy does.
func miniRelay(r *protocols.Relay) {
	r.Client.SetDeadline(time.Now().Add(timeout))
	r.Backend.SetDeadline(time.Now().Add(timeout))
	r.Backend.Write(r.ClientBuf)
	r.Client.Write(r.BackBuf)
	done := make(chan struct{}, 2)
	go func() { io.Copy(r.Backend, r.Client); done <- struct{}{} }()
	go func() { io.Copy(r.Client, r.Backend); done <- struct{}{} }()
	<-done
	r.Client.Close()
	r.Backend.Close()
	<-done
}

// client is a tiny POP3 client with a deadline on every read.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (c *client) send(raw string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.t.Fatalf("send %q: %v", raw, err)
	}
}

// line reads one line without its CRLF.
func (c *client) line() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(timeout))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads a line and checks its start.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("expected a line starting %q, got %q", prefix, l)
	}
	return l
}

// cmd sends one command and returns the first line of the response.
func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.line()
}

// multi reads the body of a multi-line response, undoing dot-stuffing.
func (c *client) multi() []string {
	c.t.Helper()
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(l, "."))
	}
}

// capa sends CAPA and returns the list.
func (c *client) capa() []string {
	c.t.Helper()
	if l := c.cmd("CAPA"); !strings.HasPrefix(l, "+OK") {
		c.t.Fatalf("CAPA: %q", l)
	}
	return c.multi()
}

func (c *client) upgrade() {
	c.t.Helper()
	tc := tls.Client(c.c, clientTLS())
	tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("tls handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

// closed checks that the server closes the connection, and returns what
// came before the close.
func (c *client) closed() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(timeout))
	rest, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("expected close, got %v after %q", err, rest)
	}
	return string(rest)
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

func wait(t *testing.T, done <-chan result) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(timeout):
		t.Fatal("Serve did not return")
	}
	return result{}
}

func netDial(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err == nil {
		c.SetDeadline(time.Now().Add(timeout))
	}
	return c, err
}

// waitFor polls cond, for state that has no event to wait on (what another
// goroutine's peer has read).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !testkit.Eventually(timeout, 5*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}
