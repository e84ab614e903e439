package lmtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

// tx is one backend's share of the open message: its connection, go-smtp's
// LMTP client on it, and the recipients it accepted, in RCPT order.
type tx struct {
	backend string
	b       *protocols.Backend
	c       *gosmtp.Client
	stop    func() bool // unregisters the close-on-cancel of the session context
	rcpts   []string
	err     error // the transaction broke: its recipients get 4xx
}

// open connects the lease's backend: greeting, LHLO with the client's
// name, STARTTLS when the backend's tls says so. Every command has a
// deadline; ctx ending closes the connection.
func (t *tx) open(ctx context.Context, lease *protocols.Lease, helo string, s *protocols.Session) error {
	b, err := lease.Dial(ctx, func(ctx context.Context, b *protocols.Backend) error {
		c, err := hello(ctx, b, helo)
		t.c = c
		return err
	})
	if err != nil {
		return err
	}
	t.b = b
	t.stop = context.AfterFunc(ctx, func() { b.Close() })
	b.SetDeadline(time.Time{}) // go-smtp's client sets its own per command
	s.Log.Debug("backend transaction opened", "backend", b.Name)
	return nil
}

// hello is the backend dialogue up to a ready client: greeting, STARTTLS
// when the backend's tls says so, and LHLO with the client's name.
//
// go-smtp's LMTP client has no STARTTLS of its own, so that part is done
// here on b.Reader; the client then gets the TLS connection with the
// greeting replayed in front of it (it insists on reading one).
func hello(ctx context.Context, b *protocols.Backend, helo string) (*gosmtp.Client, error) {
	if helo == "" {
		helo = "localhost"
	}
	var conn net.Conn = b.Conn
	if b.StartTLS {
		greeting, err := startTLS(ctx, b, helo)
		if err != nil {
			return nil, fmt.Errorf("starttls: %w", err)
		}
		conn = &replayConn{Conn: b.Conn, r: io.MultiReader(strings.NewReader(greeting), b.Reader)}
	}
	c := gosmtp.NewClientLMTP(conn)
	c.CommandTimeout = backendTimeout
	if dl, ok := ctx.Deadline(); ok {
		c.CommandTimeout = time.Until(dl)
	}
	if err := c.Hello(helo); err != nil {
		var se *gosmtp.SMTPError
		if errors.As(err, &se) && nameRefused(se.Code) {
			// The client's LHLO name: its fault, not the backend's.
			return nil, protocols.ClientFault(fmt.Errorf("lhlo: %w", se))
		}
		return nil, fmt.Errorf("lhlo: %w", err)
	}
	c.CommandTimeout, c.SubmissionTimeout = backendTimeout, dataEndTimeout
	return c, nil
}

// nameRefused says whether a 5xx to LHLO refuses the name the client
// gave; 500, 502 and 503 say the backend does not speak LMTP as asked.
func nameRefused(code int) bool {
	return code >= 500 && code < 600 && code != 500 && code != 502 && code != 503
}

// startTLS reads the greeting, says LHLO and STARTTLS, and upgrades the
// connection (RFC 3207). The fresh reader of SetConn drops anything the
// backend sent before the handshake. It returns the greeting, as sent.
func startTLS(ctx context.Context, b *protocols.Backend, helo string) (string, error) {
	if dl, ok := ctx.Deadline(); ok {
		b.Conn.SetDeadline(dl)
	}
	greeting, err := readReply(b.Reader, 220)
	if err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	for _, cmd := range []struct {
		line string
		code int
	}{{"LHLO " + helo, 250}, {"STARTTLS", 220}} {
		if _, err := io.WriteString(b.Conn, cmd.line+"\r\n"); err != nil {
			return "", err
		}
		if _, err := readReply(b.Reader, cmd.code); err != nil {
			return "", err
		}
	}
	tc, err := mtls.Handshake(ctx, b.Conn, b.TLS, false)
	if err != nil {
		return "", err
	}
	b.SetConn(tc)
	return greeting, nil
}

// Limits on a reply read here, before go-smtp's client takes over.
const (
	maxReplyLine  = 4096
	maxReplyLines = 100
)

// errBackend is a backend that does not speak LMTP as expected.
var errBackend = errors.New("unexpected backend response")

// readReply reads one reply (RFC 5321 §4.2: "250-..." lines, then
// "250 ...") that must have code, and returns it as sent.
func readReply(r *bufio.Reader, code int) (string, error) {
	var b strings.Builder
	want := strconv.Itoa(code)
	for range maxReplyLines {
		line, err := protocols.ReadLine(r, maxReplyLine)
		if err != nil {
			return "", err
		}
		if len(line) < 3 || string(line[:3]) != want || len(line) > 3 && line[3] != ' ' && line[3] != '-' {
			return "", fmt.Errorf("%w: %q", errBackend, truncate(string(line)))
		}
		b.Write(line)
		b.WriteString("\r\n")
		if len(line) == 3 || line[3] == ' ' {
			return b.String(), nil
		}
	}
	return "", fmt.Errorf("%w: reply of more than %d lines", errBackend, maxReplyLines)
}

// replayConn is a backend connection whose reads start with bytes already
// consumed from it (the greeting).
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// rcpt gives the backend one recipient.
func (t *tx) rcpt(to string, opts *gosmtp.RcptOptions) error {
	if t.err != nil {
		return t.err
	}
	if err := t.c.Rcpt(to, opts); err != nil {
		return err
	}
	t.rcpts = append(t.rcpts, to)
	return nil
}

// fail ends a transaction that broke; the connection is closed at once,
// which aborts a DATA in progress (a final dot would deliver a part).
func (t *tx) fail(err error) {
	if t.err == nil {
		t.err = err
	}
	t.close()
}

// quit says goodbye, waiting quitTimeout at most for the answer, and
// closes. It goes through go-smtp's client, which holds the TLS layer
// after STARTTLS.
func (t *tx) quit() {
	if t.b != nil && t.err == nil {
		t.c.CommandTimeout = quitTimeout
		t.c.Quit()
	}
	t.close()
}

func (t *tx) close() {
	if t.b == nil {
		return
	}
	t.stop()
	t.b.Close()
}
