package integration

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/internal/transcript"
)

// smtpListeners are the three classic SMTP front doors: MX on 25 (no
// AUTH), submission on 587 (STARTTLS, then AUTH) and SMTPS on 465.
const smtpListeners = `
[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:1"
pool = "mx"
hostname = "mx.proxy.test"

[[listener]]
name = "submission"
protocol = "smtp"
address = "127.0.0.1:2"
tls = "starttls"
require_tls = true
smtp_auth = "required"
pool = "mx"
hostname = "mx.proxy.test"

[[listener]]
name = "smtps"
protocol = "smtp"
address = "127.0.0.1:3"
tls = "implicit"
smtp_auth = "required"
pool = "mx"
hostname = "mx.proxy.test"
`

// smtpBack is one [[pool.backend]] of pool "mx"; extra is more TOML keys.
type smtpBack struct{ name, addr, extra string }

// smtpConfig puts listeners in front of pool "mx" of backs. Health checks
// run once at start, so connection counts are the sessions'.
func smtpConfig(listeners string, backs ...smtpBack) string {
	var b strings.Builder
	b.WriteString("[limits]\nauth_failure_delay = \"0s\"\n")
	b.WriteString(listeners)
	b.WriteString("\n[[pool]]\nname = \"mx\"\n  [pool.health]\n  interval = \"1h\"\n")
	for _, bk := range backs {
		fmt.Fprintf(&b, "  [[pool.backend]]\n  name = %q\n  smtp = %q\n%s\n", bk.name, bk.addr, bk.extra)
	}
	return b.String()
}

// smtpBackend starts a fake SMTP backend on 127.0.0.1:0.
func smtpBackend(t *testing.T, name string, o demo.SMTPOptions) (*demo.SMTPServer, string) {
	t.Helper()
	b := demo.NewSMTPServer(name, o)
	return b, testkit.Serve(t, b)
}

// dialSMTP connects go-smtp's client to a listener the way its tls says
// and says EHLO client.example.
func dialSMTP(t *testing.T, e *env, listener string) *gosmtp.Client {
	t.Helper()
	c, err := dialSMTPErr(e, listener)
	if err != nil {
		t.Fatalf("dial %s: %v", listener, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example"); err != nil {
		t.Fatalf("EHLO on %s: %v", listener, err)
	}
	return c
}

func dialSMTPErr(e *env, listener string) (*gosmtp.Client, error) {
	addr := e.Addr[listener]
	mode := ""
	for _, l := range e.Cfg.Listeners {
		if l.Name == listener {
			mode = l.TLS
		}
	}
	var c *gosmtp.Client
	var err error
	switch mode {
	case "starttls":
		c, err = gosmtp.DialStartTLS(addr, e.ClientTLS())
	case "implicit":
		c, err = gosmtp.DialTLS(addr, e.ClientTLS())
	default:
		c, err = gosmtp.Dial(addr)
	}
	if err == nil {
		c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	}
	return c, err
}

// sendSMTP runs one transaction and returns the final reply's text.
func sendSMTP(c *gosmtp.Client, from string, mo *gosmtp.MailOptions, rcpts []string, ro *gosmtp.RcptOptions, msg string) (string, error) {
	if err := c.Mail(from, mo); err != nil {
		return "", fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, ro); err != nil {
			return "", fmt.Errorf("RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return "", fmt.Errorf("DATA write: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// smtpCode is the reply code of an error from go-smtp's client, 0 if none.
func smtpCode(err error) (int, gosmtp.EnhancedCode, string) {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, se.EnhancedCode, se.Message
	}
	return 0, gosmtp.EnhancedCode{}, ""
}

// testMessage has what a relay must not touch: CRLF lines, lines starting
// with dots, 8-bit UTF-8, a 998-octet line.
const testMessage = "From: J\xc3\xb6rg <j\xc3\xb6rg@example.org>\r\nTo: a@example.org\r\nSubject: test\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
	"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n.a line with a leading dot\r\n..and two\r\n.\r\n \r\n"

var longLine = strings.Repeat("x", 998) + "\r\n"

// TestSMTPMessageArrivesExactly: on plain, STARTTLS and implicit-TLS
// listeners a message reaches a backend byte for byte, with its envelope:
// MAIL FROM, every RCPT TO, the SIZE, BODY, SMTPUTF8 and DSN parameters,
// the client's HELO name, and the backend's own final reply.
func TestSMTPMessageArrivesExactly(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice@example.org": "alice-pw"}})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	msg := testMessage + longLine
	for i, listener := range []string{"smtp", "submission", "smtps"} {
		t.Run(listener, func(t *testing.T) {
			c := dialSMTP(t, e, listener)
			if listener != "smtp" {
				if err := c.Auth(sasl.NewPlainClient("", "alice@example.org", "alice-pw")); err != nil {
					t.Fatalf("AUTH: %v", err)
				}
			}
			if ok, size := c.Extension("SIZE"); !ok || size != "" {
				t.Errorf("SIZE extension %v %q, want the backend's (none)", ok, size)
			}
			mo := &gosmtp.MailOptions{Size: int64(len(msg)), Body: gosmtp.Body8BitMIME, UTF8: true,
				Return: gosmtp.DSNReturnHeaders, EnvelopeID: "env-" + listener}
			ro := &gosmtp.RcptOptions{Notify: []gosmtp.DSNNotify{gosmtp.DSNNotifySuccess, gosmtp.DSNNotifyFailure},
				OriginalRecipientType: gosmtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@example.org"}
			rcpts := []string{"a@example.org", "z\xc3\xb6e@example.org", "b@example.net"}
			text, err := sendSMTP(c, "j\xc3\xb6rg@example.org", mo, rcpts, ro, msg)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("2.0.0 mail1: queued as %d", i+1); text != want {
				t.Errorf("final reply %q, want the backend's %q", text, want)
			}
			if err := c.Quit(); err != nil {
				t.Errorf("QUIT: %v", err)
			}
			got := back.Messages()
			if len(got) != i+1 {
				t.Fatalf("backend has %d messages, want %d", len(got), i+1)
			}
			m := got[i]
			if string(m.Data) != msg {
				t.Errorf("data differs:\n got %q\nwant %q", m.Data, msg)
			}
			if m.From != "j\xc3\xb6rg@example.org" || m.Helo != "client.example" {
				t.Errorf("from %q helo %q", m.From, m.Helo)
			}
			if m.MailOpts.Size != int64(len(msg)) || m.MailOpts.Body != gosmtp.Body8BitMIME || !m.MailOpts.UTF8 ||
				m.MailOpts.Return != gosmtp.DSNReturnHeaders || m.MailOpts.EnvelopeID != "env-"+listener {
				t.Errorf("MAIL parameters %+v", m.MailOpts)
			}
			if len(m.Rcpts) != len(rcpts) {
				t.Fatalf("recipients %+v, want %q", m.Rcpts, rcpts)
			}
			for j, r := range m.Rcpts {
				if r.To != rcpts[j] || len(r.Opts.Notify) != 2 || r.Opts.OriginalRecipient != "orig@example.org" {
					t.Errorf("recipient %d: %+v", j, r)
				}
			}
			if wantUser := map[bool]string{true: "", false: "alice@example.org"}[listener == "smtp"]; m.User != wantUser {
				t.Errorf("backend login %q, want %q", m.User, wantUser)
			}
		})
	}
}

// TestSMTPBackendRepliesVerbatim: an unknown recipient gets the backend's
// 550 5.1.1 and its text; a DATA rejection gets the backend's code and
// text; the transaction goes on for the other recipients.
func TestSMTPBackendRepliesVerbatim(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	const noUser = "mail1 says: <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table (ref 7731)"
	back.RejectRcpt("nobody@example.org", &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: noUser})
	back.RejectRcpt("later@example.org", &gosmtp.SMTPError{Code: 450, EnhancedCode: gosmtp.EnhancedCode{4, 2, 0}, Message: "mail1: greylisted, come back in 5 minutes"})

	c := dialSMTP(t, e, "smtp")
	if err := c.Mail("s@example.org", nil); err != nil {
		t.Fatal(err)
	}
	err := c.Rcpt("nobody@example.org", nil)
	if code, enh, text := smtpCode(err); code != 550 || enh != (gosmtp.EnhancedCode{5, 1, 1}) || text != noUser {
		t.Errorf("unknown recipient: %d %v %q (%v)", code, enh, text, err)
	}
	err = c.Rcpt("later@example.org", nil)
	if code, enh, _ := smtpCode(err); code != 450 || enh != (gosmtp.EnhancedCode{4, 2, 0}) {
		t.Errorf("greylisted recipient: %v", err)
	}
	if err := c.Rcpt("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(testMessage))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if m := back.Messages(); len(m) != 1 || len(m[0].Rcpts) != 1 || m[0].Rcpts[0].To != "a@example.org" {
		t.Fatalf("backend got %+v", m)
	}

	const spam = "mail1: 5.7.1 message content rejected, spam score 42.0 (ref 991)"
	back.RejectData(&gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 7, 1}, Message: spam})
	_, err = sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage)
	if code, enh, text := smtpCode(err); code != 554 || enh != (gosmtp.EnhancedCode{5, 7, 1}) || text != spam {
		t.Errorf("DATA rejection: %v", err)
	}
	back.RejectData(&gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 3, 1}, Message: "mail1: queue file write error"})
	_, err = sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage)
	if code, _, _ := smtpCode(err); code != 452 {
		t.Errorf("temporary DATA rejection: %v", err)
	}
	back.RejectData(nil)
	if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, "Subject: third\r\n\r\nok\r\n"); err != nil {
		t.Errorf("after rejections: %v", err)
	}
	if n := len(back.Messages()); n != 2 {
		t.Errorf("backend has %d messages, want 2 (rejected ones are not delivered)", n)
	}
	c.Quit()
}

// TestSMTPBackendDiesMidData: the client gets 4xx, never 250, the message
// is not delivered, and the same connection can send it again (to a fresh
// backend connection).
func TestSMTPBackendDiesMidData(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	back.DropInData(true)
	c := dialSMTP(t, e, "smtp")
	big := testMessage + strings.Repeat(longLine, 200)
	_, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, big)
	if code, _, _ := smtpCode(err); code/100 != 4 {
		t.Fatalf("backend died mid-DATA: got %v, want a 4xx reply", err)
	}
	if n := len(back.Messages()); n != 0 {
		t.Fatalf("backend has %d messages", n)
	}
	back.DropInData(false)
	if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, big); err != nil {
		t.Fatalf("retry on the same connection: %v", err)
	}
	if m := back.Messages(); len(m) != 1 || string(m[0].Data) != big {
		t.Fatalf("retry not delivered intact (%d messages)", len(m))
	}
	c.Quit()
	if !strings.Contains(e.Logs.String(), "backend connection dropped") {
		t.Error("the loss is not logged")
	}
}

// TestSMTPSizeLimit: SIZE is max_size, or the backend's when smaller; a
// message over it gets 552 5.3.4, announced or not, and is not delivered.
func TestSMTPSizeLimit(t *testing.T) {
	big, bigAddr := smtpBackend(t, "big", demo.SMTPOptions{MaxSize: 100000})
	listener := strings.Replace(smtpListeners, `hostname = "mx.proxy.test"`, "hostname = \"mx.proxy.test\"\nmax_size = 2000", 1)
	e := startProxy(t, smtpConfig(listener, smtpBack{"big", bigAddr, ""}))
	c := dialSMTP(t, e, "smtp")
	if _, size := c.Extension("SIZE"); size != "2000" {
		t.Errorf("SIZE %q, want max_size 2000", size)
	}
	err := c.Mail("s@example.org", &gosmtp.MailOptions{Size: 5000})
	if code, enh, _ := smtpCode(err); code != 552 || enh != (gosmtp.EnhancedCode{5, 3, 4}) {
		t.Errorf("MAIL SIZE=5000: %v, want 552 5.3.4", err)
	}
	_, err = sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, strings.Repeat(longLine, 5))
	if code, enh, _ := smtpCode(err); code != 552 || enh != (gosmtp.EnhancedCode{5, 3, 4}) {
		t.Errorf("5000 octets without SIZE: %v, want 552 5.3.4", err)
	}
	if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
		t.Errorf("small message after the big one: %v", err)
	}
	if m := big.Messages(); len(m) != 1 || string(m[0].Data) != testMessage {
		t.Errorf("backend got %d messages, want only the small one", len(m))
	}
	c.Quit()

	small, smallAddr := smtpBackend(t, "small", demo.SMTPOptions{MaxSize: 1500})
	e2 := startProxy(t, smtpConfig(listener, smtpBack{"small", smallAddr, ""}))
	c2 := dialSMTP(t, e2, "smtp")
	if _, size := c2.Extension("SIZE"); size != "1500" {
		t.Errorf("SIZE %q, want the backend's 1500 (below max_size)", size)
	}
	_, err = sendSMTP(c2, "s@example.org", nil, []string{"a@example.org"}, nil, strings.Repeat(longLine, 2))
	if code, enh, _ := smtpCode(err); code != 552 || enh != (gosmtp.EnhancedCode{5, 3, 4}) {
		t.Errorf("2000 octets over the backend's SIZE: %v, want 552 5.3.4", err)
	}
	if n := len(small.Messages()); n != 0 {
		t.Errorf("backend got %d messages", n)
	}
}

// TestSMTPAuth: on smtp_auth = "required" MAIL needs AUTH (530 5.7.0); a
// wrong password gets the backend's refusal verbatim and may be retried;
// LOGIN works too; the password never reaches the log, even at debug level.
func TestSMTPAuth(t *testing.T) {
	const pw = "Sup3r-s3cret-Pa55"
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice": pw}, RequireAuth: true})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	for _, listener := range []string{"submission", "smtps"} {
		t.Run(listener, func(t *testing.T) {
			c := dialSMTP(t, e, listener)
			if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") || !strings.Contains(mechs, "LOGIN") {
				t.Errorf("AUTH extension %v %q", ok, mechs)
			}
			err := c.Mail("alice@example.org", nil)
			if code, enh, _ := smtpCode(err); code != 530 || enh != (gosmtp.EnhancedCode{5, 7, 0}) {
				t.Errorf("MAIL before AUTH: %v, want 530 5.7.0", err)
			}
			err = c.Auth(sasl.NewPlainClient("", "alice", "wrong-"+pw))
			if code, enh, text := smtpCode(err); code != 535 || enh != (gosmtp.EnhancedCode{5, 7, 8}) || text != "mail1: authentication failed for alice" {
				t.Errorf("wrong password: %v, want the backend's 535 5.7.8", err)
			}
			if err := c.Auth(sasl.NewLoginClient("alice", pw)); err != nil {
				t.Fatalf("AUTH LOGIN after a failure: %v", err)
			}
			if _, err := sendSMTP(c, "alice@example.org", nil, []string{"bob@example.org"}, nil, testMessage); err != nil {
				t.Fatal(err)
			}
			c.Quit()
		})
	}
	if m := back.Messages(); len(m) != 2 || m[0].User != "alice" || m[1].User != "alice" {
		t.Errorf("backend messages %+v", m)
	}
	waitFor(t, 5*time.Second, "session end lines", func() bool { return strings.Count(e.Logs.String(), "session end") >= 2 })
	logs := e.Logs.String()
	for _, secret := range []string{pw, base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + pw)),
		base64.StdEncoding.EncodeToString([]byte(pw)), base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong-" + pw))} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds a secret %q", secret)
		}
	}
	if !strings.Contains(logs, "user=alice") {
		t.Error("the log does not name the user")
	}
}

// TestSMTPNoAuthBeforeTLS: with require_tls, EHLO before STARTTLS offers
// no AUTH and AUTH is refused; after STARTTLS it is offered.
func TestSMTPNoAuthBeforeTLS(t *testing.T) {
	_, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice": "pw"}})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	s := dialScript(t, e.Addr["submission"])
	s.expect("220 mx.proxy.test ESMTP")
	s.send("EHLO client.example\r\n")
	ehlo := readSMTPReply(s)
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("EHLO before TLS:\n%s", ehlo)
	}
	s.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")) + "\r\n")
	s.expect("5")
	s.send("MAIL FROM:<alice@example.org>\r\n")
	s.expect("530 5.7.0 Must issue a STARTTLS command first")
	s.send("STARTTLS\r\n")
	s.expect("220 ")
	s.upgrade(e.ClientTLS())
	s.send("EHLO client.example\r\n")
	if ehlo := readSMTPReply(s); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") || strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("EHLO after TLS:\n%s", ehlo)
	}
	s.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")) + "\r\n")
	s.expect("235 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
}

// TestSMTPStartTLSInjection: a command pipelined behind STARTTLS in the
// same write is thrown away with the plaintext buffer, never executed.
func TestSMTPStartTLSInjection(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	listener := strings.Replace(smtpListeners, "address = \"127.0.0.1:1\"\npool", "address = \"127.0.0.1:1\"\ntls = \"starttls\"\npool", 1)
	e := startProxy(t, smtpConfig(listener, smtpBack{"mail1", addr, ""}))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	s.send("EHLO client.example\r\n")
	readSMTPReply(s)
	s.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<victim@example.org>\r\n")
	s.expect("220 ")
	s.upgrade(e.ClientTLS())
	s.send("EHLO client.example\r\n")
	readSMTPReply(s)
	s.send("RCPT TO:<victim@example.org>\r\n")
	s.expect("502 5.5.1 Missing MAIL FROM")
	s.send("DATA\r\n")
	s.expect("502 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
	if n := len(back.Messages()); n != 0 {
		t.Errorf("backend got %d messages", n)
	}
}

// TestSMTPRoundRobin: 90 connections over 3 backends split 30/30/30; a
// stopped backend is skipped without the client noticing.
func TestSMTPRoundRobin(t *testing.T) {
	var backs []*demo.SMTPServer
	var cfg []smtpBack
	for i := range 3 {
		name := fmt.Sprintf("mail%d", i+1)
		b, addr := smtpBackend(t, name, demo.SMTPOptions{})
		backs = append(backs, b)
		cfg = append(cfg, smtpBack{name, addr, ""})
	}
	e := startProxy(t, smtpConfig(smtpListeners, cfg...))
	for i := range 90 {
		c := dialSMTP(t, e, "smtp")
		if err := c.Quit(); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for _, b := range backs {
		if n := b.Sessions(); n != 30 {
			t.Errorf("%s served %d connections, want 30", b.Name, n)
		}
	}

	backs[1].Close()
	for i := range 30 {
		c, err := dialSMTPErr(e, "smtp")
		if err != nil {
			t.Fatalf("connection %d with mail2 stopped: %v", i, err)
		}
		if err := c.Hello("client.example"); err != nil {
			t.Fatalf("connection %d with mail2 stopped: EHLO: %v", i, err)
		}
		if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
			t.Fatalf("connection %d with mail2 stopped: %v", i, err)
		}
		c.Quit()
	}
	n1, n3 := len(backs[0].Messages()), len(backs[2].Messages())
	if n1+n3 != 30 || n1 < 10 || n3 < 10 || len(backs[1].Messages()) != 0 {
		t.Errorf("with mail2 stopped: mail1 %d, mail3 %d messages", n1, n3)
	}
}

// TestSMTPBackendRefusesGreeting: a backend that answers the connection
// with 554 instead of 220 is skipped for the next, unseen by the client.
func TestSMTPBackendRefusesGreeting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("554 5.3.2 grumpy: not accepting connections\r\n"))
			c.Close()
			refused <- struct{}{}
		}
	}()
	t.Cleanup(func() { ln.Close() })
	good, addr := smtpBackend(t, "good", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"grumpy", ln.Addr().String(), ""}, smtpBack{"good", addr, ""}))
	for i := range 4 {
		c := dialSMTP(t, e, "smtp")
		if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Quit()
	}
	if n := len(good.Messages()); n != 4 {
		t.Errorf("good backend got %d messages, want 4", n)
	}
	if len(refused) < 2 {
		t.Errorf("the grumpy backend was tried %d times (health check included)", len(refused))
	}
}

// TestSMTPXCLIENT: a backend that announces XCLIENT, with forward_client
// on, learns the client's address, port and HELO name; with it off, it
// hears nothing.
func TestSMTPXCLIENT(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{XCLIENT: true})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, "  forward_client = true\n"}))
	c, err := dialSMTPErr(e, "smtp")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client's own address, as the proxy saw it.
	local := clientAddrOf(t, e, c)
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	xs := back.XClients()
	if len(xs) != 1 {
		t.Fatalf("backend got %d XCLIENT commands: %v", len(xs), xs)
	}
	x := xs[0]
	host, port, _ := net.SplitHostPort(local)
	if x["ADDR"] != "127.0.0.1" || x["ADDR"] != host || x["PORT"] != port || x["HELO"] != "client.example" || x["PROTO"] != "ESMTP" {
		t.Errorf("XCLIENT %v, want ADDR=%s PORT=%s HELO=client.example PROTO=ESMTP", x, host, port)
	}
	if _, lport, _ := net.SplitHostPort(e.Addr["smtp"]); x["DESTPORT"] != lport || x["DESTADDR"] != "127.0.0.1" {
		t.Errorf("XCLIENT DESTADDR %q DESTPORT %q, want the listener's", x["DESTADDR"], x["DESTPORT"])
	}
	if _, ok := x["LOGIN"]; ok {
		t.Error("XCLIENT asserted a LOGIN in passthrough mode")
	}
	// NAME (issue 10 point 14), so that Postfix logs the client's name,
	// not mailproxy's: here the forward-confirmed name of 127.0.0.1.
	if want := confirmedName(t, "127.0.0.1"); x["NAME"] != want {
		t.Errorf("XCLIENT NAME %q, want %q", x["NAME"], want)
	}
	if m := back.Messages(); len(m) != 1 || m[0].XClient["ADDR"] != "127.0.0.1" || m[0].Helo != "client.example" {
		t.Errorf("message recorded with %+v", m)
	}

	off, offAddr := smtpBackend(t, "mail2", demo.SMTPOptions{XCLIENT: true})
	e2 := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail2", offAddr, ""}))
	c2 := dialSMTP(t, e2, "smtp")
	if _, err := sendSMTP(c2, "s@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c2.Quit()
	if xs := off.XClients(); len(xs) != 0 {
		t.Errorf("forward_client off, yet XCLIENT %v", xs)
	}
}

// confirmedName is the first name a reverse lookup of ip gives that
// resolves back to it, or [UNAVAILABLE], as Postfix would take it.
func confirmedName(t *testing.T, ip string) string {
	names, _ := net.LookupAddr(ip)
	for _, n := range names {
		addrs, _ := net.LookupHost(n)
		if slices.Contains(addrs, ip) {
			return strings.TrimSuffix(n, ".")
		}
	}
	t.Logf("%s has no forward-confirmed name here", ip)
	return "[UNAVAILABLE]"
}

// clientAddrOf finds the address the client connected from, from the
// proxy's "session start" line (go-smtp's client hides its connection).
func clientAddrOf(t *testing.T, e *env, c *gosmtp.Client) string {
	t.Helper()
	var addr string
	waitFor(t, 5*time.Second, "session start line", func() bool {
		for _, l := range strings.Split(e.Logs.String(), "\n") {
			if strings.Contains(l, "session start") && strings.Contains(l, "listener=smtp ") {
				_, after, _ := strings.Cut(l, "client=")
				addr, _, _ = strings.Cut(after, " ")
			}
		}
		return addr != ""
	})
	return addr
}

// TestSMTPBackendStartTLS: a backend with tls = "starttls" is spoken to
// over TLS.
func TestSMTPBackendStartTLS(t *testing.T) {
	tc, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tc.cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{TLS: &tls.Config{Certificates: []tls.Certificate{tc.cert}},
		Users: map[string]string{"alice": "pw"}})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, fmt.Sprintf("  tls = \"starttls\"\n  tls_ca = %q\n", ca)}))
	c := dialSMTP(t, e, "submission")
	if err := c.Auth(sasl.NewPlainClient("", "alice", "pw")); err != nil {
		t.Fatal(err)
	}
	if _, err := sendSMTP(c, "alice@example.org", nil, []string{"a@example.org"}, nil, testMessage); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	if m := back.Messages(); len(m) != 1 || !m[0].TLS || string(m[0].Data) != testMessage {
		t.Errorf("backend got %+v", m)
	}
}

// TestSMTPChunking: BDAT from the client is accepted and reaches the
// backend intact (as DATA); BINARYMIME is not offered.
func TestSMTPChunking(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	s.send("EHLO client.example\r\n")
	if ehlo := readSMTPReply(s); !strings.Contains(ehlo, "CHUNKING") || strings.Contains(ehlo, "BINARYMIME") {
		t.Errorf("EHLO:\n%s", ehlo)
	}
	part1, part2 := "Subject: chunks\r\n\r\n.first line", " continues\r\nsecond line\r\n"
	s.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.org>\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.send(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	s.expect("250 ")
	s.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	s.expect("250 2.0.0 mail1: queued as 1")
	s.send("QUIT\r\n")
	s.expect("221 ")
	if m := back.Messages(); len(m) != 1 || string(m[0].Data) != part1+part2 {
		t.Errorf("backend got %+v", m)
	}
}

// TestSMTPChunkingAbandoned: RSET, AUTH or STARTTLS in the middle of a
// BDAT transfer neither deliver the partial message nor hang the session,
// which goes on. (Each connection abandons one BDAT transfer and then uses
// DATA: go-smtp v0.25.1 races between an abandoned transfer's goroutine and
// the next BDAT's.)
func TestSMTPChunkingAbandoned(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice": "pw"}})
	listener := strings.Replace(smtpListeners, "address = \"127.0.0.1:1\"\npool", "address = \"127.0.0.1:1\"\ntls = \"starttls\"\nsmtp_auth = \"optional\"\npool", 1)
	e := startProxy(t, smtpConfig(listener, smtpBack{"mail1", addr, ""}))
	start := func() *script {
		s := dialScript(t, e.Addr["smtp"])
		s.expect("220 ")
		s.send("EHLO client.example\r\n")
		readSMTPReply(s)
		s.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.org>\r\nBDAT 7\r\npartial")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("250 ")
		return s
	}
	whole := func(s *script, n int) {
		s.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.send("whole\r\n.\r\n")
		s.expect(fmt.Sprintf("250 2.0.0 mail1: queued as %d", n))
		s.send("QUIT\r\n")
		s.expect("221 ")
	}

	s := start()
	s.send("RSET\r\n")
	s.expect("250 ")
	whole(s, 1)

	s = start()
	s.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw")) + "\r\n")
	s.expect("503 5.5.1 ")
	s.send("STARTTLS\r\n")
	s.expect("220 ")
	s.upgrade(e.ClientTLS())
	s.send("EHLO client.example\r\n")
	readSMTPReply(s)
	whole(s, 2)

	for _, m := range back.Messages() {
		if string(m.Data) != "whole\r\n" {
			t.Errorf("backend got %q", m.Data)
		}
	}
}

// TestSMTPNoSmuggling: bare-LF dot lines (SMTP smuggling) cannot end the
// message early at the backend: it gets exactly one message.
func TestSMTPNoSmuggling(t *testing.T) {
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{})
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"mail1", addr, ""}))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	s.send("EHLO client.example\r\n")
	readSMTPReply(s)
	s.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.send("Subject: one\r\n\r\nbody\n.\nMAIL FROM:<smuggled@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" +
		"Subject: two\r\n\r\nx\r\n.\nmore\r\n.\r\n")
	s.expect("250 ")
	s.send("QUIT\r\n")
	s.expect("221 ")
	m := back.Messages()
	if len(m) != 1 || len(m[0].Rcpts) != 1 || m[0].Rcpts[0].To != "a@example.org" {
		t.Fatalf("backend got %d messages: %+v", len(m), m)
	}
}

// TestSMTPNoBackend: with every backend down the client gets 421 at EHLO
// and the connection ends.
func TestSMTPNoBackend(t *testing.T) {
	e := startProxy(t, smtpConfig(smtpListeners, smtpBack{"dead", deadAddr(t), ""}))
	s := dialScript(t, e.Addr["smtp"])
	s.expect("220 ")
	s.send("EHLO client.example\r\n")
	s.expect("421 4.3.0 ")
	s.expectClosed()
}

// TestSMTPConcurrentSessions: sessions in parallel (under -race) each get
// their message through.
func TestSMTPConcurrentSessions(t *testing.T) {
	var cfg []smtpBack
	var backs []*demo.SMTPServer
	for i := range 2 {
		b, addr := smtpBackend(t, fmt.Sprintf("mail%d", i+1), demo.SMTPOptions{Users: users(20, "user")})
		backs = append(backs, b)
		cfg = append(cfg, smtpBack{b.Name, addr, ""})
	}
	e := startProxy(t, smtpConfig(smtpListeners, cfg...))
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialSMTPErr(e, "smtps")
			if err == nil {
				defer c.Close()
				err = c.Hello("client.example")
			}
			if err == nil {
				err = c.Auth(sasl.NewPlainClient("", fmt.Sprintf("user%d", i), "pw"))
			}
			if err == nil {
				_, err = sendSMTP(c, "s@example.org", nil, []string{"a@example.org"}, nil, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))
			}
			if err != nil {
				errs <- fmt.Errorf("session %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(backs[0].Messages()) + len(backs[1].Messages()); n != 20 {
		t.Errorf("backends got %d messages, want 20", n)
	}
}

// readSMTPReply reads one whole reply from a script, lines joined by "\n".
func readSMTPReply(s *script) string {
	s.t.Helper()
	var lines []string
	for {
		l := s.expect("")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// TestSMTPClientTranscripts replays what real clients sent (msmtp, swaks,
// s-nail, curl, python smtplib, neomutt; recorded against Postfix) through
// mailproxy and wants the same reply codes Postfix gave, reply for reply.
// The STARTTLS flows continue in TLS with EHLO and QUIT.
func TestSMTPClientTranscripts(t *testing.T) {
	conns, err := transcript.Load("*-smtp.txt")
	if err != nil {
		t.Fatal(err)
	}
	back, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"user860": "pw"}})
	listener := `
[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:1"
tls = "starttls"
smtp_auth = "optional"
pool = "mx"
`
	e := startProxy(t, smtpConfig(listener, smtpBack{"mail1", addr, ""}))
	messages := 0
	for _, conn := range conns {
		t.Run(conn.String(), func(t *testing.T) {
			if replayTranscript(t, e, conn) {
				messages++
			}
		})
	}
	if messages == 0 {
		t.Error("no transcript delivered a message")
	}
	if n := len(back.Messages()); n != messages {
		t.Errorf("backend has %d messages, the transcripts delivered %d", n, messages)
	}
}

// replayTranscript sends the client's turns and checks that each server
// turn's reply codes come back; a STARTTLS flow goes on in TLS with EHLO
// and QUIT. It says whether a message was delivered.
func replayTranscript(t *testing.T, e *env, conn transcript.Conn) bool {
	s := dialScript(t, e.Addr["smtp"])
	delivered := false
	for _, tn := range conn.Turns() {
		if tn.Client {
			s.send(tn.Data)
			continue
		}
		for _, want := range transcriptCodes(tn.Data) {
			got := readSMTPReply(s)
			if !strings.HasPrefix(got, want) {
				t.Fatalf("Postfix said %s, mailproxy %q", want, got)
			}
			delivered = delivered || (want == "250" && strings.Contains(got, "queued as"))
		}
	}
	if conn.TLS {
		s.upgrade(e.ClientTLS())
		s.send("EHLO client.example\r\n")
		if r := readSMTPReply(s); !strings.HasPrefix(r, "250") {
			t.Fatalf("EHLO after STARTTLS: %q", r)
		}
		s.send("QUIT\r\n")
		s.expect("221 ")
		return false
	}
	return delivered
}

// transcriptCodes lists the code of every reply in a server turn.
func transcriptCodes(data string) []string {
	var codes []string
	for _, l := range strings.SplitAfter(data, "\r\n") {
		if len(l) >= 4 && l[3] == ' ' {
			codes = append(codes, l[:3])
		}
	}
	return codes
}
