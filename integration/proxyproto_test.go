package integration

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/proxy/proxyproto"
	"mailproxy/routing"
)

// The PROXY protocol both ways: backends that require a header (as
// Dovecot's haproxy = yes listeners and Postfix's
// smtpd_upstream_proxy_protocol = haproxy do), and listeners behind a
// balancer that sends one. The client addresses in headers sent *to* the
// proxy (192.0.2.x, 198.51.100.x) are documentation addresses that only
// ever appear as bytes in a header; nothing connects to them.

// ppBackend is a fake backend's listener that takes a connection only
// after its PROXY header, records every header, and keeps what the proxy
// sent after it.
type ppBackend struct {
	net.Listener
	mu      sync.Mutex
	headers []*proxyproto.Header
	sent    []*testkit.SyncBuffer
	refused []error
}

// servePP runs srv behind a ppBackend on 127.0.0.1:0 until the test ends.
func servePP(t *testing.T, srv testkit.Server) (*ppBackend, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ppBackend{Listener: ln}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(b) }()
	t.Cleanup(func() { srv.Close(); ln.Close(); <-done })
	return b, ln.Addr().String()
}

// Accept hands on connections that start with a valid header; it closes
// the others, as a real backend on a PROXY port does.
func (b *ppBackend) Accept() (net.Conn, error) {
	for {
		c, err := b.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, err := proxyproto.ReadHeader(c)
		c.SetReadDeadline(time.Time{})
		b.mu.Lock()
		if err != nil {
			b.refused = append(b.refused, err)
			b.mu.Unlock()
			c.Close()
			continue
		}
		sent := &testkit.SyncBuffer{}
		b.headers, b.sent = append(b.headers, h), append(b.sent, sent)
		b.mu.Unlock()
		return &teeConn{Conn: c, sent: sent}, nil
	}
}

// sessions returns the PROXY (not LOCAL) headers so far, with what
// followed each; probes counts the LOCAL ones (health checks).
func (b *ppBackend) sessions() (hs []*proxyproto.Header, sent []string, probes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, h := range b.headers {
		if h.Local {
			probes++
			continue
		}
		hs, sent = append(hs, h), append(sent, b.sent[i].String())
	}
	return hs, sent, probes
}

func (b *ppBackend) refusals() []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]error(nil), b.refused...)
}

// teeConn keeps a copy of everything read from the conn.
type teeConn struct {
	net.Conn
	sent *testkit.SyncBuffer
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.sent.Write(p[:n])
	return n, err
}

// idIMAP is a scripted IMAP backend that, like Dovecot and unlike the
// demo server, answers ID (RFC 2971): AUTHENTICATE PLAIN logs anyone in,
// LOGOUT ends, anything else is OK.
type idIMAP struct{ testkit.ConnServer }

func (s *idIMAP) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] idimap ready\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
		verb, _, _ := strings.Cut(cmd, " ")
		switch strings.ToUpper(verb) {
		case "ID":
			io.WriteString(c, "* ID NIL\r\n"+tag+" OK ID completed\r\n")
		case "AUTHENTICATE":
			io.WriteString(c, tag+" OK [CAPABILITY IMAP4rev1 ID] Logged in\r\n")
		case "LOGOUT":
			io.WriteString(c, "* BYE Logging out\r\n"+tag+" OK Logout completed\r\n")
			return
		default:
			io.WriteString(c, tag+" OK done\r\n")
		}
	}
}

// ppBackends are an IMAP (with ID), a POP3 (with XCLIENT) and an SMTP
// (with XCLIENT) fake backend that all require a PROXY header.
type ppBackends struct {
	imap, pop3, smtp             *ppBackend
	imapAddr, pop3Addr, smtpAddr string
	pop3Srv                      *demo.POP3Server
	smtpSrv                      *demo.SMTPServer
}

func startPPBackends(t *testing.T) *ppBackends {
	var b ppBackends
	id := &idIMAP{}
	id.Handle = id.serve
	b.imap, b.imapAddr = servePP(t, id)
	b.pop3Srv = demo.NewPOP3Server("mail1", map[string]string{"alice": "pw"}, nil)
	b.pop3Srv.XCLIENT = true
	b.pop3, b.pop3Addr = servePP(t, b.pop3Srv)
	b.smtpSrv = demo.NewSMTPServer("mail1", demo.SMTPOptions{XCLIENT: true})
	b.smtp, b.smtpAddr = servePP(t, b.smtpSrv)
	return &b
}

// ppConfig is an IMAP, IMAPS, POP3 and SMTP listener (listenerExtra on
// each) in front of the ppBackends, which get the PROXY header version.
func ppConfig(b *ppBackends, version, limits, listenerExtra string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "[limits]\nauth_failure_delay = \"0s\"\n%s\n", limits)
	for i, l := range [][3]string{{"imap", "imap", "starttls"}, {"imaps", "imap", "implicit"}, {"pop3", "pop3", "none"}, {"smtp", "smtp", "none"}} {
		fmt.Fprintf(&s, "[[listener]]\nname = %q\nprotocol = %q\naddress = \"127.0.0.1:%d\"\ntls = %q\npool = \"main\"\n%s\n", l[0], l[1], i+1, l[2], listenerExtra)
	}
	fmt.Fprintf(&s, `[[pool]]
name = "main"
  [pool.health]
  interval = "50ms"
  timeout = "1s"
  [[pool.backend]]
  name = "mail1"
  imap = %q
  pop3 = %q
  smtp = %q
  send_proxy_protocol = %q
  forward_client = true
`, b.imapAddr, b.pop3Addr, b.smtpAddr, version)
	return s.String()
}

// imapLogin logs alice in and out over s, which has had its greeting.
func (s *script) imapLogin() {
	s.t.Helper()
	s.send("a LOGIN alice pw\r\n")
	s.expect("a OK")
	s.send("b LOGOUT\r\n")
	s.expect("* BYE")
	s.expect("b OK")
}

// smtpSend sends one message over conn (a fresh connection to an SMTP
// listener, PROXY header already written when there is one).
func smtpSend(t *testing.T, conn net.Conn) {
	t.Helper()
	c := gosmtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// checkHeader checks that b got one PROXY header, of version, from src to
// dst, and returns what the proxy said after it.
func checkHeader(t *testing.T, what string, b *ppBackend, version int, src, dst string) string {
	t.Helper()
	hs, sent, _ := b.sessions()
	if len(hs) != 1 {
		t.Fatalf("%s backend got %d PROXY headers, want 1: %+v", what, len(hs), hs)
	}
	h := hs[0]
	if h.Version != version || h.Source.String() != src || h.Dest.String() != dst {
		t.Errorf("%s backend got a v%d header from %v to %v, want v%d from %s to %s", what, h.Version, h.Source, h.Dest, version, src, dst)
	}
	return sent[0]
}

// TestProxyProtocolToBackends: with send_proxy_protocol, IMAP, POP3 and
// SMTP backends that require a PROXY header get one, v1 or v2, naming the
// client (127.0.0.1 and its port) and the listener it connected to, before
// anything else, and in v2 the client's TLS; the health checks send the
// LOCAL form (v1 "PROXY UNKNOWN") and pass.
func TestProxyProtocolToBackends(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := startPPBackends(t)
			e := startProxy(t, ppConfig(b, fmt.Sprintf("v%d", v), "", ""))
			for _, pb := range []*ppBackend{b.imap, b.pop3, b.smtp} {
				waitFor(t, 5*time.Second, "two health checks", func() bool { _, _, n := pb.sessions(); return n >= 2 })
			}

			s := dialScript(t, e.Addr["imap"])
			s.expect("* OK")
			s.imapLogin()
			sent := checkHeader(t, "IMAP", b.imap, v, s.conn.LocalAddr().String(), e.Addr["imap"])
			if !strings.Contains(sent, `"x-originating-ip" "127.0.0.1"`) {
				t.Errorf("IMAP backend got no ID with the client's address:\n%s", sent)
			}
			if hs, _, _ := b.imap.sessions(); hs[0].TLSVersion != "" {
				t.Errorf("a plain session's header says TLS %q", hs[0].TLSVersion)
			}

			// Over implicit TLS, v2 says so (Dovecot then counts the
			// connection as secured); v1 cannot.
			s = dialScript(t, e.Addr["imaps"])
			s.upgrade(e.ClientTLS())
			s.expect("* OK")
			s.imapLogin()
			hs, _, _ := b.imap.sessions()
			if len(hs) != 2 || hs[1].Source.String() != s.conn.(*tls.Conn).NetConn().LocalAddr().String() {
				t.Fatalf("IMAPS: headers %+v", hs)
			}
			if want := map[int]string{1: "", 2: "TLSv1.3"}[v]; hs[1].TLSVersion != want {
				t.Errorf("IMAPS session's v%d header says TLS %q, want %q", v, hs[1].TLSVersion, want)
			}
			// And after STARTTLS too.
			s = dialScript(t, e.Addr["imap"])
			s.expect("* OK")
			s.send("t STARTTLS\r\n")
			s.expect("t OK")
			s.upgrade(e.ClientTLS())
			s.imapLogin()
			hs, _, _ = b.imap.sessions()
			if want := map[int]string{1: "", 2: "TLSv1.3"}[v]; len(hs) != 3 || hs[2].TLSVersion != want {
				t.Errorf("STARTTLS session's v%d headers %+v, want the last to say TLS %q", v, hs, want)
			}

			p, err := dialPOP3(e.Addr["pop3"], nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.login("alice", "pw"); err != nil {
				t.Fatal(err)
			}
			if err := p.quit(); err != nil {
				t.Fatal(err)
			}
			checkHeader(t, "POP3", b.pop3, v, p.conn.LocalAddr().String(), e.Addr["pop3"])
			p.Close()

			conn, err := net.Dial("tcp", e.Addr["smtp"])
			if err != nil {
				t.Fatal(err)
			}
			client := conn.LocalAddr().String()
			smtpSend(t, conn)
			checkHeader(t, "SMTP", b.smtp, v, client, e.Addr["smtp"])
			if m := b.smtpSrv.Messages(); len(m) != 1 {
				t.Errorf("SMTP backend got %d messages", len(m))
			}

			pool := e.Srv.Pool("main")
			for _, proto := range []routing.Protocol{routing.IMAP, routing.POP3, routing.SMTP} {
				if st := pool.State(pool.Backend("mail1"), proto); st != routing.Up {
					t.Errorf("%v backend is %v", proto, st)
				}
			}
			for _, pb := range []*ppBackend{b.imap, b.pop3, b.smtp} {
				if r := pb.refusals(); len(r) > 0 {
					t.Errorf("a backend refused connections: %v", r)
				}
			}
			if strings.Contains(e.Logs.String(), "health check failed") {
				t.Error("a health check failed")
			}
		})
	}
}

// balancerHeader is what a balancer sends for a client at 192.0.2.7:4711
// that connected to 198.51.100.1:port.
func balancerHeader(t *testing.T, version int, port int) []byte {
	t.Helper()
	h, err := proxyproto.Format(version, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4711}, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestProxyProtocolFromBalancer: a listener with proxy_protocol = true
// takes the client's address from the balancer's v1 or v2 header (before
// TLS on an implicit-TLS listener): the session log, IMAP ID, POP3 and
// SMTP XCLIENT and the PROXY header sent on to the backend all name
// 192.0.2.7:4711, and the address it connected to is the header's.
func TestProxyProtocolFromBalancer(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := startPPBackends(t)
			e := startProxy(t, ppConfig(b, "v2", "", "proxy_protocol = true"))
			const client = "192.0.2.7:4711"

			s := dialScript(t, e.Addr["imap"])
			s.send(string(balancerHeader(t, v, 143)))
			s.expect("* OK")
			s.imapLogin()
			sent := checkHeader(t, "IMAP", b.imap, 2, client, "198.51.100.1:143")
			for _, want := range []string{`"x-originating-ip" "192.0.2.7" "x-originating-port" "4711"`, `"x-connected-ip" "198.51.100.1" "x-connected-port" "143"`} {
				if !strings.Contains(sent, want) {
					t.Errorf("IMAP backend's ID lacks %s:\n%s", want, sent)
				}
			}
			checkSessionLine(t, e, "imap", client, s.conn.LocalAddr().String())

			// Implicit TLS: the header comes first, in plain text.
			s = dialScript(t, e.Addr["imaps"])
			s.send(string(balancerHeader(t, v, 993)))
			s.upgrade(e.ClientTLS())
			s.expect("* OK")
			s.send("a LOGOUT\r\n")
			s.expect("* BYE")
			checkSessionLine(t, e, "imaps", client, s.conn.(*tls.Conn).NetConn().LocalAddr().String())

			p := dialScript(t, e.Addr["pop3"])
			p.send(string(balancerHeader(t, v, 110)))
			p.expect("+OK")
			p.send("USER alice\r\n")
			p.expect("+OK")
			p.send("PASS pw\r\n")
			p.expect("+OK")
			p.send("QUIT\r\n")
			p.expect("+OK")
			checkHeader(t, "POP3", b.pop3, 2, client, "198.51.100.1:110")
			if f := b.pop3Srv.Forwarded(); len(f) != 1 || f[0] != "192.0.2.7" {
				t.Errorf("POP3 XCLIENT ADDR %q, want 192.0.2.7", f)
			}

			conn, err := net.Dial("tcp", e.Addr["smtp"])
			if err != nil {
				t.Fatal(err)
			}
			conn.Write(balancerHeader(t, v, 25))
			smtpSend(t, conn)
			checkHeader(t, "SMTP", b.smtp, 2, client, "198.51.100.1:25")
			if xs := b.smtpSrv.XClients(); len(xs) != 1 || xs[0]["ADDR"] != "192.0.2.7" || xs[0]["PORT"] != "4711" ||
				xs[0]["DESTADDR"] != "198.51.100.1" || xs[0]["DESTPORT"] != "25" {
				t.Errorf("SMTP XCLIENT %v, want ADDR=192.0.2.7 PORT=4711 DESTADDR=198.51.100.1 DESTPORT=25", xs)
			}
		})
	}
}

// checkSessionLine waits for the listener's session start line naming
// client, and the balancer as via ("": no via, the session came direct).
func checkSessionLine(t *testing.T, e *env, listener, client, via string) {
	t.Helper()
	waitFor(t, 5*time.Second, "a session start line of "+listener+" for "+client+" via "+via, func() bool {
		for _, l := range strings.Split(e.Logs.String(), "\n") {
			if strings.Contains(l, `msg="session start"`) && strings.Contains(l, " listener="+listener+" ") &&
				strings.Contains(l, " client="+client) && strings.Contains(l+" ", " via="+via+" ") == (via != "") &&
				(via != "" || !strings.Contains(l, " via=")) {
				return true
			}
		}
		return false
	})
}

// expectShut checks that the proxy closes the connection without having
// said a word. A close with unread input is a reset, which counts too.
func (s *script) expectShut() {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(s.r)
	if len(rest) > 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		s.t.Fatalf("expected a silent close, got %q, %v", rest, err)
	}
}

// TestProxyProtocolRefusals: on a proxy_protocol listener a connection
// without a valid header is closed without a greeting (a client that
// speaks first at once, a silent one when the wait ends); a v2 LOCAL
// header keeps the connection's own address; and the per-IP limit counts
// the clients the headers name, not the balancer.
func TestProxyProtocolRefusals(t *testing.T) {
	b := startPPBackends(t)
	e := startProxy(t, ppConfig(b, "v2", "login_timeout = \"1s\"\nmax_connections_per_ip = 1", "proxy_protocol = true"))

	s := dialScript(t, e.Addr["imap"])
	s.send("a LOGIN alice pw\r\n")
	s.expectShut()
	s = dialScript(t, e.Addr["imap"])
	start := time.Now()
	s.expectShut() // silent: closed when the header wait (login_timeout here) ends
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("a silent connection was closed after %v", d)
	}
	s = dialScript(t, e.Addr["imap"])
	s.send("PROXY TCP4 192.0.2.7 198.51.100.1 4711\r\n") // a port missing
	s.expectShut()
	logs := e.Logs.String()
	if n := strings.Count(logs, `msg="connection closed: no valid PROXY header" listener=imap`); n != 3 {
		t.Errorf("%d log lines for a missing or broken header, want 3:\n%s", n, logs)
	}
	if strings.Contains(logs, "session start") {
		t.Errorf("a connection without a header started a session:\n%s", logs)
	}

	local, err := proxyproto.Format(2, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s = dialScript(t, e.Addr["imap"])
	s.send(string(local))
	s.expect("* OK")
	checkSessionLine(t, e, "imap", s.conn.LocalAddr().String(), "") // no via: the balancer is the client
	s.send("a LOGOUT\r\n")
	s.expect("* BYE")

	// Limit 1 per client: a second session of 192.0.2.7 is refused while
	// the first is open, though both come from 127.0.0.1, and 192.0.2.8
	// still gets in.
	first := dialScript(t, e.Addr["imap"])
	first.send(string(balancerHeader(t, 2, 143)))
	first.expect("* OK")
	second := dialScript(t, e.Addr["imap"])
	second.send(string(balancerHeader(t, 1, 143)))
	second.expect("* BYE Too many connections")
	second.expectClosed()
	other, err := proxyproto.Format(1, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 8), Port: 4711}, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 143})
	if err != nil {
		t.Fatal(err)
	}
	third := dialScript(t, e.Addr["imap"])
	third.send(string(other))
	third.expect("* OK")
	if !strings.Contains(e.Logs.String(), `msg="connection refused: limit reached" listener=imap client=192.0.2.7:4711 via=127.0.0.1:`) {
		t.Errorf("no limit line for 192.0.2.7 via the balancer:\n%s", e.Logs.String())
	}
}

// TestProxyProtocolUntrusted: a listener that trusts only 127.0.0.2 with
// PROXY headers closes a connection from 127.0.0.1 before reading
// anything, header or not, so it cannot claim another client's address;
// from 127.0.0.2 the same header is honoured. And a listener without
// proxy_protocol takes a PROXY line as a bad command, never as an address.
func TestProxyProtocolUntrusted(t *testing.T) {
	b := startPPBackends(t)
	e := startProxy(t, ppConfig(b, "v2", "", "proxy_protocol = true\nproxy_protocol_trusted = [\"127.0.0.2/32\"]"))

	s := dialScript(t, e.Addr["imap"])
	s.send(string(balancerHeader(t, 1, 143)))
	s.expectShut()
	if !strings.Contains(e.Logs.String(), `msg="connection refused: not a trusted PROXY protocol sender" listener=imap client=127.0.0.1:`) {
		t.Errorf("no refusal line:\n%s", e.Logs.String())
	}
	if strings.Contains(e.Logs.String(), "192.0.2.7") {
		t.Errorf("an untrusted header was read:\n%s", e.Logs.String())
	}

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.Addr["imap"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s = &script{t: t, conn: c, r: bufio.NewReader(c)}
	s.send(string(balancerHeader(t, 2, 143)))
	s.expect("* OK")
	checkSessionLine(t, e, "imap", "192.0.2.7:4711", c.LocalAddr().String())

	plain := startProxy(t, ppConfig(b, "v2", "", ""))
	s = dialScript(t, plain.Addr["imap"])
	s.expect("* OK")
	s.send(string(balancerHeader(t, 1, 143)))
	line := s.expect("")
	if !strings.Contains(line, "BAD") {
		t.Errorf("a PROXY line on a plain listener got %q", line)
	}
	s.send("a LOGOUT\r\n")
	s.expect("* BYE")
	checkSessionLine(t, plain, "imap", s.conn.LocalAddr().String(), "")
	if strings.Contains(plain.Logs.String(), "192.0.2.7") {
		t.Errorf("a PROXY line on a plain listener named a client:\n%s", plain.Logs.String())
	}
}
