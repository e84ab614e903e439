package integration

// Issue 10, the protocol side: a failure the client caused is answered to
// that client and never counts against a backend; what a backend sends
// before the relay is bounded; the login bound holds for SMTP too.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/routing"
)

// withLimits adds keys to the [limits] table of a config that has one.
func withLimits(config, keys string) string {
	return strings.Replace(config, "[limits]\n", "[limits]\n"+keys+"\n", 1)
}

// smtpPair is a pool of two demo SMTP backends that know user "u" (AUTH
// PLAIN, password "pw") and a proxy in front of them. Health checks run
// once at start: any later change of state is a session's doing.
func smtpPair(t *testing.T, limits string) (*env, []*demo.SMTPServer) {
	t.Helper()
	var backs []*demo.SMTPServer
	var cfg []smtpBack
	for i := range 2 {
		name := fmt.Sprintf("mail%d", i+1)
		b, addr := smtpBackend(t, name, demo.SMTPOptions{Users: map[string]string{"u": "pw"}})
		backs = append(backs, b)
		cfg = append(cfg, smtpBack{name, addr, ""})
	}
	return startProxy(t, withLimits(smtpConfig(smtpListeners, cfg...), limits)), backs
}

// allUp fails the test unless every backend of pool is up for proto and
// the log never said one went down.
func allUp(t *testing.T, e *env, pool string, proto routing.Protocol) {
	t.Helper()
	p := e.Srv.Pool(pool)
	for _, b := range p.Backends() {
		if st := p.State(b, proto); st != routing.Up {
			t.Errorf("backend %s is %v, want up", b.Name, st)
		}
	}
	if logs := e.Logs.String(); strings.Contains(logs, `msg="backend down"`) || strings.Contains(logs, `msg="backend failed"`) {
		t.Errorf("a backend was charged:\n%s", grepLines(logs, "backend down")+"\n"+grepLines(logs, "backend failed"))
	}
}

// TestSMTPBadHeloIsTheClients is issue 10 point 1: a HELO name with a bare
// CR gets 501 and never counts against a backend; the client may say EHLO
// again and send.
func TestSMTPBadHeloIsTheClients(t *testing.T) {
	e, backs := smtpPair(t, "")
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	for range 4 {
		s.send("EHLO a\rb\r\n")
		s.expect("501 5.5.2 ")
		s.send("HELO a\x00b\r\n")
		s.expect("501 5.5.2 ")
	}
	s.send("EHLO client.example\r\n")
	if r := readSMTPReply(s); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO after the bad ones: %q", r)
	}
	s.send("MAIL FROM:<s@example.org>\r\n")
	s.expect("250 ")
	s.send("RCPT TO:<a@example.org>\r\n")
	s.expect("250 ")
	s.send("DATA\r\n")
	s.expect("354 ")
	s.send("Subject: hi\r\n\r\nhello\r\n.\r\n")
	s.expect("250 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
	if n := len(backs[0].Messages()) + len(backs[1].Messages()); n != 1 {
		t.Errorf("backends got %d messages, want 1", n)
	}
	allUp(t, e, "mx", routing.SMTP)
}

// heloRefuser is an SMTP backend whose EHLO and HELO refuse one name with
// 501, as Postfix does with reject_invalid_helo_hostname and
// smtpd_delay_reject = no; every other command is accepted.
type heloRefuser struct{ bad string }

func (h heloRefuser) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	if c.Hostname() == h.bad {
		return nil, &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "<" + h.bad + ">: Helo command rejected: Invalid name"}
	}
	return acceptAll{}, nil
}

type acceptAll struct{}

func (acceptAll) Mail(string, *gosmtp.MailOptions) error { return nil }
func (acceptAll) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (acceptAll) Data(r io.Reader) error                 { _, err := io.Copy(io.Discard, r); return err }
func (acceptAll) Reset()                                 {}
func (acceptAll) Logout() error                          { return nil }
func (acceptAll) AuthMechanisms() []string               { return nil }
func (acceptAll) Auth(string) (sasl.Server, error)       { return nil, gosmtp.ErrAuthUnsupported }

// TestSMTPBackendRefusesHeloIsTheClients is issue 10 point 1: a HELO name
// the backend refuses with 5xx reaches the client as the backend said it,
// and neither counts against that backend nor sends the client to the next.
func TestSMTPBackendRefusesHeloIsTheClients(t *testing.T) {
	var cfg []smtpBack
	for i := range 2 {
		srv := gosmtp.NewServer(heloRefuser{"bad.example"})
		srv.Domain = "mail"
		srv.AllowInsecureAuth = true
		cfg = append(cfg, smtpBack{fmt.Sprintf("mail%d", i+1), testkit.Serve(t, srv), ""})
	}
	e := startProxy(t, smtpConfig(smtpListeners, cfg...))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	for range 4 {
		s.send("EHLO bad.example\r\n")
		s.expect("501 5.5.2 <bad.example>: Helo command rejected")
	}
	s.send("EHLO good.example\r\n")
	if r := readSMTPReply(s); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO good.example: %q", r)
	}
	s.send("MAIL FROM:<s@example.org>\r\n")
	s.expect("250 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
	allUp(t, e, "mx", routing.SMTP)
}

// TestSMTPBareCRInEnvelope is issue 10 point 2: a bare CR in MAIL FROM or
// RCPT TO gets 501 5.5.2, and the transaction and the backend connection
// go on: the next RCPT and the message are accepted.
func TestSMTPBareCRInEnvelope(t *testing.T) {
	e, backs := smtpPair(t, "")
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	s.send("EHLO client.example\r\n")
	readSMTPReply(s)
	s.send("MAIL FROM:<s\r@example.org>\r\n")
	s.expect("501 5.5.2 ")
	s.send("MAIL FROM:<s@example.org>\r\n")
	s.expect("250 ")
	s.send("RCPT TO:<a@example.org>\r\n")
	s.expect("250 ")
	s.send("RCPT TO:<b\r@example.org>\r\n")
	s.expect("501 5.5.2 ")
	s.send("RCPT TO:<c@example.org>\r\n")
	s.expect("250 ")
	s.send("DATA\r\n")
	s.expect("354 ")
	s.send("Subject: hi\r\n\r\nhello\r\n.\r\n")
	s.expect("250 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
	var msgs []demo.SMTPMessage
	sessions := 0
	for _, b := range backs {
		msgs = append(msgs, b.Messages()...)
		sessions += b.Sessions()
	}
	if len(msgs) != 1 || len(msgs[0].Rcpts) != 2 || msgs[0].Rcpts[0].To != "a@example.org" || msgs[0].Rcpts[1].To != "c@example.org" {
		t.Errorf("backends got %+v, want one message to a@ and c@", msgs)
	}
	if sessions != 1 {
		t.Errorf("backends saw %d connections, want 1: the bad lines must not drop it", sessions)
	}
	allUp(t, e, "mx", routing.SMTP)
}

// hostileSMTP runs one hostile client's connection: bad HELO names and
// bare CRs in the envelope. It returns the first reply that
// was not what a client's mistake should get.
func hostileSMTP(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(line, want string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if line != "" {
			if _, err := io.WriteString(c, line); err != nil {
				return err
			}
		}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("after %q: %w", line, err)
			}
			if len(l) > 3 && l[3] == '-' {
				continue
			}
			if !strings.HasPrefix(l, want) {
				return fmt.Errorf("after %q: got %q, want %q", line, l, want)
			}
			return nil
		}
	}
	for _, step := range [][2]string{
		{"", "220 "},
		{"EHLO a\rb\r\n", "501 "},
		{"EHLO x\ry\r\n", "501 "},
		{"EHLO hostile.example\r\n", "250 "},
		{"MAIL FROM:<a\rb@example.org>\r\n", "501 "},
		{"MAIL FROM:<a@example.org>\r\n", "250 "},
		{"RCPT TO:<c\rd@example.org>\r\n", "501 "},
		{"RSET\r\n", "250 "},
		{"EHLO a\rb\r\n", "250 "}, // go-smtp's session exists: a new EHLO only resets it
	} {
		if err := say(step[0], step[1]); err != nil {
			return err
		}
	}
	return nil
}

// TestHostileClientsDoNotHurtOthers is issue 10 "what it must show" 2 for
// points 1 and 2: hostile clients hammer a pool of two backends with bad
// HELO names and bare CRs, while a well-behaved client on another
// connection logs in and sends, each time in under a second, and a third
// one in the middle of DATA throughout finishes its message. No backend
// goes down.
func TestHostileClientsDoNotHurtOthers(t *testing.T) {
	e, backs := smtpPair(t, "")
	tlsCfg := e.ClientTLS()

	// A client in the middle of DATA while the hostile ones run.
	mid := dialSMTP(t, e, "smtps")
	if err := mid.Auth(sasl.NewPlainClient("", "u", "pw")); err != nil {
		t.Fatal(err)
	}
	if err := mid.Mail("mid@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := mid.Rcpt("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := mid.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Subject: long\r\n\r\nfirst half\r\n")

	// Two hostile clients, 100 connections each; the good client sends
	// until they are done (and at least 20 times).
	var wg sync.WaitGroup
	hostileErr := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if err := hostileSMTP(e.Addr["smtp"]); err != nil {
					hostileErr <- err
					return
				}
			}
		}()
	}
	hostileDone := make(chan struct{})
	go func() { wg.Wait(); close(hostileDone) }()
	finished := func() bool {
		select {
		case <-hostileDone:
			return true
		default:
			return false
		}
	}

	var slowest time.Duration
	sends := 0
	for i := 0; i < 20 || !finished() && i < 5000; i++ {
		sends++
		start := time.Now()
		c, err := gosmtp.DialTLS(e.Addr["smtps"], tlsCfg)
		if err != nil {
			t.Fatalf("good client %d: %v", i, err)
		}
		c.CommandTimeout, c.SubmissionTimeout = 5*time.Second, 5*time.Second
		if err := c.Hello("good.example"); err != nil {
			t.Fatalf("good client %d: EHLO: %v", i, err)
		}
		if err := c.Auth(sasl.NewPlainClient("", "u", "pw")); err != nil {
			t.Fatalf("good client %d: AUTH: %v", i, err)
		}
		if _, err := sendSMTP(c, "good@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
			t.Fatalf("good client %d: %v", i, err)
		}
		c.Quit()
		d := time.Since(start)
		slowest = max(slowest, d)
		if d > time.Second {
			t.Errorf("good client %d took %v, want under a second", i, d)
		}
	}
	<-hostileDone
	close(hostileErr)
	for err := range hostileErr {
		t.Errorf("hostile client: %v", err)
	}
	io.WriteString(w, "second half\r\n")
	if err := w.Close(); err != nil {
		t.Errorf("the message in DATA throughout: %v", err)
	}
	mid.Quit()
	t.Logf("%d good logins and sends beside 200 hostile connections; slowest %v", sends, slowest)

	good, midSeen := 0, 0
	for _, b := range backs {
		for _, m := range b.Messages() {
			switch m.From {
			case "good@example.org":
				good++
			case "mid@example.org":
				midSeen++
			}
		}
	}
	if good != sends || midSeen != 1 {
		t.Errorf("backends got %d good messages and %d long ones, want %d and 1", good, midSeen, sends)
	}
	allUp(t, e, "mx", routing.SMTP)
}

// TestSMTPLoginTimeout is issue 10 point 7: login_timeout bounds an SMTP
// session from accept to its first successful AUTH or accepted MAIL: a
// client trickling a byte at a time is closed, and so is one that stalls
// its STARTTLS handshake. After MAIL the bound is lifted.
func TestSMTPLoginTimeout(t *testing.T) {
	e, _ := smtpPair(t, `login_timeout = "1s"`)
	// closedWithin reads until the proxy closes c (a reset counts: the
	// trickler may write after the close) or d passes.
	closedWithin := func(c net.Conn, d time.Duration) (string, error) {
		c.SetReadDeadline(time.Now().Add(d))
		rest, err := io.ReadAll(c)
		if errors.Is(err, syscall.ECONNRESET) {
			err = nil
		}
		return string(rest), err
	}

	t.Run("trickle", func(t *testing.T) {
		c, err := net.Dial("tcp", e.Addr["smtp"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := range 100 { // NOOPs a byte at a time, for up to 10 s
				<-tick.C
				if _, err := c.Write([]byte{"NOOP\r\n"[i%6]}); err != nil {
					return
				}
			}
		}()
		out, err := closedWithin(c, 5*time.Second)
		if err != nil {
			t.Fatalf("still open after %v: %v (read %q)", time.Since(start), err, out)
		}
		d := time.Since(start)
		if d > 3*time.Second {
			t.Errorf("closed after %v, want about login_timeout (1s)", d)
		}
		t.Logf("trickling client closed after %v (login_timeout 1s), after %q", d.Round(time.Millisecond), out)
		c.Close()
		<-done
	})

	t.Run("stalled starttls", func(t *testing.T) {
		s := dialScript(t, e.Addr["submission"])
		s.expect("220 ")
		s.send("EHLO client.example\r\n")
		readSMTPReply(s)
		s.send("STARTTLS\r\n")
		s.expect("220 ")
		start := time.Now()
		out, err := closedWithin(s.conn, 5*time.Second)
		if err != nil {
			t.Fatalf("still open after %v: %v", time.Since(start), err)
		}
		d := time.Since(start)
		if d > 3*time.Second {
			t.Errorf("closed after %v, want about login_timeout (1s)", d)
		}
		t.Logf("stalled STARTTLS closed %v after the 220", d.Round(time.Millisecond))
		if out != "" {
			t.Errorf("after the 220 to STARTTLS the client got %q in plain text", out)
		}
	})

	t.Run("lifted after MAIL", func(t *testing.T) {
		s := dialScript(t, e.Addr["smtp"])
		s.expect("220 ")
		s.send("EHLO client.example\r\n")
		readSMTPReply(s)
		s.send("MAIL FROM:<s@example.org>\r\n")
		s.expect("250 ")
		<-time.After(1500 * time.Millisecond) // longer than login_timeout
		s.send("RCPT TO:<a@example.org>\r\n")
		s.expect("250 ")
		s.send("QUIT\r\n")
		s.expect("221 ")
	})

	t.Run("lifted after AUTH", func(t *testing.T) {
		c := dialSMTP(t, e, "smtps")
		if err := c.Auth(sasl.NewPlainClient("", "u", "pw")); err != nil {
			t.Fatal(err)
		}
		<-time.After(1500 * time.Millisecond)
		if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
			t.Fatal(err)
		}
	})
}

// scriptedIMAP serves a scripted IMAP backend: greet, then handle each line.
func scriptedIMAP(t *testing.T, greeting string, handle func(c net.Conn, line string) bool) string {
	t.Helper()
	srv := &testkit.ConnServer{Handle: func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, greeting+"\r\n"); err != nil {
			return
		}
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil || !handle(c, strings.TrimRight(line, "\r\n")) {
				return
			}
		}
	}}
	return testkit.Serve(t, srv)
}

// TestIMAPBackendFloodBounded is issue 10 point 6: a backend that answers
// CAPABILITY with endless untagged lines is cut off after a bounded amount,
// and the client gets NO [UNAVAILABLE] at once, not at login_timeout.
func TestIMAPBackendFloodBounded(t *testing.T) {
	var mu sync.Mutex
	var sent int64
	addr := scriptedIMAP(t, "* OK flood ready", func(c net.Conn, line string) bool {
		tag, _, _ := strings.Cut(line, " ")
		if !strings.Contains(line, "CAPABILITY") {
			io.WriteString(c, tag+" BAD no\r\n")
			return true
		}
		chunk := []byte(strings.Repeat("* X "+strings.Repeat("y", 1000)+"\r\n", 64))
		for range 100000 { // at most 6.4 GB
			n, err := c.Write(chunk)
			mu.Lock()
			sent += int64(n)
			mu.Unlock()
			if err != nil {
				return false
			}
		}
		return false
	})
	e := startProxy(t, withLimits(imapConfig("", "flood", addr), `login_timeout = "20s"`))
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK ")
	start := time.Now()
	s.send("a LOGIN u pw\r\n")
	s.expect("a NO [UNAVAILABLE]")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("answered after %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if sent > 64<<20 {
		t.Errorf("the proxy read %d MB of untagged lines before giving up", sent>>20)
	}
	t.Logf("the backend got %d KB out before the proxy hung up", sent>>10)
}

// TestIMAPStalledStartTLSGetsNoPlaintext is issue 10 point 14: a client
// that stalls its handshake after "OK Begin TLS negotiation" is closed at
// login_timeout with nothing more said in plain text on what is by then a
// TLS stream.
func TestIMAPStalledStartTLSGetsNoPlaintext(t *testing.T) {
	_, addr := imapBackend(t, "mail1", users(1, "u"), nil)
	e := startProxy(t, withLimits(imapConfig("", "mail1", addr), `login_timeout = "1s"`))
	s := dialScript(t, e.Addr["imap"])
	s.expect("* OK ")
	s.send("a STARTTLS\r\n")
	s.expect("a OK ")
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(s.r)
	if err != nil {
		t.Fatalf("not closed: %v", err)
	}
	if len(rest) != 0 {
		t.Errorf("after the OK to STARTTLS the client got %q in plain text", rest)
	}
}

// TestPOP3StalledSTLSGetsNoPlaintext: the same for POP3's STLS.
func TestPOP3StalledSTLSGetsNoPlaintext(t *testing.T) {
	_, addr := pop3Backend(t, "mail1", users(1, "u"), nil)
	e := startProxy(t, withLimits(pop3Config("", "", "mail1", addr), `login_timeout = "1s"`))
	s := dialScript(t, e.Addr["pop3"])
	s.expect("+OK ")
	s.send("STLS\r\n")
	s.expect("+OK ")
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(s.r)
	if err != nil {
		t.Fatalf("not closed: %v", err)
	}
	if len(rest) != 0 {
		t.Errorf("after the +OK to STLS the client got %q in plain text", rest)
	}
}

// TestPOP3RetryAfterWrongPasswordSameBackend is issue 10 point 14: a
// client that mistypes its password and tries again on the same
// connection stays on the backend that refused it, as it would talking to
// that server directly.
func TestPOP3RetryAfterWrongPasswordSameBackend(t *testing.T) {
	m1, a1 := pop3Backend(t, "mail1", map[string]string{"u": "pw"}, nil)
	m2, a2 := pop3Backend(t, "mail2", map[string]string{"u": "pw"}, nil)
	m1.Add("u", "Subject: on mail1\r\n\r\nx\r\n")
	m2.Add("u", "Subject: on mail2\r\n\r\nx\r\n")
	e := startProxy(t, pop3Config("", "", "mail1", a1, "mail2", a2))
	for i := range 4 {
		c, err := dialPOP3(e.Addr["pop3"], nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ok("USER u"); err != nil {
			t.Fatal(err)
		}
		if line, err := c.cmd("PASS wrong"); err != nil || !strings.HasPrefix(line, "-ERR") {
			t.Fatalf("wrong password: %q %v", line, err)
		}
		if err := c.login("u", "pw"); err != nil {
			t.Fatalf("round %d: retry: %v", i, err)
		}
		_, lines, err := c.multi("RETR 1")
		if err != nil {
			t.Fatal(err)
		}
		c.quit()
		c.Close()
		logs := e.Logs.String()
		rejected := lastBackend(logs, `msg="login rejected by backend"`)
		got := strings.TrimPrefix(strings.Join(lines, " "), "Subject: on ")
		got, _, _ = strings.Cut(got, " ")
		if rejected != got {
			t.Errorf("round %d: wrong password refused by %s, retry served by %s", i, rejected, got)
		}
	}
}

// lastBackend is the backend= of the last log line containing msg.
func lastBackend(logs, msg string) string {
	b := ""
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, msg) {
			_, after, _ := strings.Cut(l, " backend=")
			b, _, _ = strings.Cut(after, " ")
		}
	}
	return b
}

// TestPOP3HangUpAfterWrongPasswordIsNotTheBackends is issue 10 point 1
// for the retry of point 14: a backend that hangs up after a wrong
// password (some count failures) is not charged when the client's retry
// finds the kept connection gone; the retry is served afresh.
func TestPOP3HangUpAfterWrongPasswordIsNotTheBackends(t *testing.T) {
	var addrs []string
	for range 2 {
		srv := &testkit.ConnServer{Handle: func(c net.Conn) {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			io.WriteString(c, "+OK ready\r\n")
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				switch verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " "); verb {
				case "CAPA":
					io.WriteString(c, "+OK\r\nUSER\r\n.\r\n")
				case "USER":
					io.WriteString(c, "+OK\r\n")
				case "PASS":
					if arg != "pw" {
						io.WriteString(c, "-ERR [AUTH] Authentication failed.\r\n")
						return // and hang up
					}
					io.WriteString(c, "+OK logged in\r\n")
				case "QUIT":
					io.WriteString(c, "+OK bye\r\n")
					return
				default:
					io.WriteString(c, "-ERR no\r\n")
				}
			}
		}}
		addrs = append(addrs, testkit.Serve(t, srv))
	}
	e := startProxy(t, pop3Config("", "", "mail1", addrs[0], "mail2", addrs[1]))
	c, err := dialPOP3(e.Addr["pop3"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		c.ok("USER u")
		if line, err := c.cmd("PASS wrong"); err != nil || !strings.HasPrefix(line, "-ERR") {
			t.Fatalf("wrong password: %q %v", line, err)
		}
	}
	if err := c.login("u", "pw"); err != nil {
		t.Fatalf("retry: %v", err)
	}
	c.quit()
	allUp(t, e, "main", routing.POP3)
}

// TestSMTPBackendFloodBounded is issue 10 point 6 for SMTP: a backend that
// answers EHLO with endless continuation lines is cut off after a bounded
// amount (go-smtp's client has no bound of its own) and the client gets
// 421 at once.
func TestSMTPBackendFloodBounded(t *testing.T) {
	var mu sync.Mutex
	var sent int64
	srv := &testkit.ConnServer{Handle: func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "220 flood ESMTP\r\n")
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		chunk := []byte(strings.Repeat("250-"+strings.Repeat("y", 1000)+"\r\n", 64))
		for range 100000 { // at most 6.4 GB
			n, err := c.Write(chunk)
			mu.Lock()
			sent += int64(n)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}}
	addr := testkit.Serve(t, srv)
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"flood", addr, ""}))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	start := time.Now()
	s.send("EHLO client.example\r\n")
	s.expect("421 ")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("answered after %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if sent > 64<<20 {
		t.Errorf("the proxy read %d MB of EHLO reply before giving up", sent>>20)
	}
	t.Logf("the backend got %d KB out before the proxy hung up", sent>>10)
}
