package smtp

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// backend is a session's connection to a backend: the proxy's Backend (the
// lease, the raw connection and its reader) and go-smtp's client speaking
// over it.
type backend struct {
	b      *protocols.Backend
	c      *gosmtp.Client
	rc     *replayConn // what c speaks over
	helo   string      // the client's HELO name the backend was given
	authed bool        // logged in with the client's credentials
	stop   func() bool // unregisters the close-on-cancel of the session context

	loginTimeout time.Duration // bounds AUTH ([limits] backend_timeout); 0: backendTimeout

	// saslPending: the backend waits for the client's answer to a
	// challenge of a passthrough exchange (see front.settle).
	saslPending bool
}

// greet is the backend dialogue up to a ready go-smtp client; it runs as
// the hello of Session.Dial, so a backend that fails any of it is skipped
// for the next one.
//
// go-smtp's client has no XCLIENT and reads the greeting itself, so the
// dialogue is in two parts. The raw part, on b.Reader: read the 220
// greeting; when the backend's tls is starttls, EHLO and STARTTLS; when
// forward_client is on, EHLO and, if the backend announces XCLIENT, the
// XCLIENT commands, each answered by a fresh 220 greeting. Then go-smtp's
// client gets the connection with the last greeting replayed in front of
// it and sends the EHLO whose reply it keeps (SIZE, AUTH, DSN, ...). Every
// EHLO carries the client's HELO name, so a 5xx to one is the client's
// (protocols.ErrClientFault, carrying the backend's reply).
//
// name, when not nil, gives the client's host name for XCLIENT NAME
// (clientName); it is asked only of a backend that takes NAME.
func greet(ctx context.Context, b *protocols.Backend, helo string, xattrs []attr, name func(context.Context) string, log *slog.Logger) (*backend, error) {
	if dl, ok := ctx.Deadline(); ok {
		b.Conn.SetDeadline(dl)
	}
	greeting, err := readReply(b.Reader)
	if err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if greeting.code != 220 {
		return nil, fmt.Errorf("%w: greeting %s", errBackend, greeting)
	}
	b.Greeting = greeting.String()
	if b.StartTLS {
		if err := startTLS(ctx, b, helo); err != nil {
			return nil, fmt.Errorf("starttls: %w", err)
		}
	}
	if b.ForwardClient {
		if greeting, err = forward(ctx, b, helo, xattrs, name, greeting, log); err != nil {
			return nil, err
		}
	}
	rc := newReplayConn(b.Conn, io.MultiReader(strings.NewReader(greeting.wire()), b.Reader))
	c := gosmtp.NewClient(rc)
	if dl, ok := ctx.Deadline(); ok {
		c.CommandTimeout = time.Until(dl)
	}
	if err := c.Hello(helo); err != nil {
		var se *gosmtp.SMTPError
		if errors.As(err, &se) && heloRefused(se.Code) {
			return nil, protocols.ClientFault(fmt.Errorf("ehlo: %w", se))
		}
		return nil, fmt.Errorf("ehlo: %w", err)
	}
	c.CommandTimeout, c.SubmissionTimeout = backendTimeout, dataEndTimeout
	return &backend{b: b, c: c, rc: rc, helo: helo}, nil
}

// heloRefused says whether code, in answer to EHLO or HELO, refuses the
// name the client gave rather than the command itself: any 5xx but
// 500 and 502 (no EHLO here) and 503 (out of sequence).
func heloRefused(code int) bool {
	return code >= 500 && code < 600 && code != 500 && code != 502 && code != 503
}

// ehlo sends EHLO on the raw connection and wants 250; a refused name is
// the client's fault, as in greet.
func ehlo(b *protocols.Backend, helo string) (reply, error) {
	rep, err := command(b, "EHLO "+helo)
	switch {
	case err != nil:
		return rep, err
	case heloRefused(rep.code):
		return rep, protocols.ClientFault(fmt.Errorf("ehlo: %w", rep.err()))
	case rep.code != 250:
		return rep, fmt.Errorf("%w: EHLO answered %s", errBackend, rep)
	}
	return rep, nil
}

// unsent marks err, from a go-smtp client call, as the client's fault
// when it is not the backend's reply and the call wrote nothing since
// writes was read: go-smtp's client refused the client's arguments (an
// address with CR or LF, a bad ENVID), the backend never saw the command
// and the connection is as good as before.
func (bk *backend) unsent(writes int64, err error) error {
	var se *gosmtp.SMTPError
	if err != nil && bk.rc.writes == writes && !errors.As(err, &se) {
		return protocols.ClientFault(err)
	}
	return err
}

// command sends one raw command line and reads the reply.
func command(b *protocols.Backend, line string) (reply, error) {
	if _, err := io.WriteString(b.Conn, line+"\r\n"); err != nil {
		return reply{}, err
	}
	return readReply(b.Reader)
}

// expect sends a raw command and wants the reply code code.
func expect(b *protocols.Backend, line string, code int) (reply, error) {
	rep, err := command(b, line)
	if err == nil && rep.code != code {
		err = fmt.Errorf("%w: %s answered %s", errBackend, strings.Fields(line)[0], rep)
	}
	return rep, err
}

// startTLS upgrades the backend connection (RFC 3207). UpgradeTLS drops
// anything the backend sent before the handshake.
func startTLS(ctx context.Context, b *protocols.Backend, helo string) error {
	if _, err := ehlo(b, helo); err != nil {
		return err
	}
	if _, err := expect(b, "STARTTLS", 220); err != nil {
		return err
	}
	return b.UpgradeTLS(ctx)
}

// forward tells a backend that announces XCLIENT who the client is, and
// returns the greeting to replay: the one that answered the last XCLIENT.
// A backend that refuses XCLIENT (it does not trust mailproxy's address)
// is used anyway, as IMAP does with a refused ID, with a warning: it then
// sees mailproxy as the client.
func forward(ctx context.Context, b *protocols.Backend, helo string, xattrs []attr, name func(context.Context) string, greeting reply, log *slog.Logger) (reply, error) {
	rep, err := ehlo(b, helo)
	if err != nil {
		return greeting, err
	}
	names, ok := rep.extensions()["XCLIENT"]
	if !ok {
		log.Debug("backend has no XCLIENT", "backend", b.Name)
		return greeting, nil
	}
	supported := strings.Fields(names)
	if name != nil && slices.ContainsFunc(supported, func(s string) bool { return strings.EqualFold(s, "NAME") }) {
		xattrs = append([]attr{{"NAME", name(ctx)}}, xattrs...)
	}
	for _, cmd := range xclientCommands(supported, xattrs) {
		rep, err := command(b, cmd)
		if err != nil {
			return greeting, fmt.Errorf("xclient: %w", err)
		}
		if rep.code != 220 {
			log.Warn("backend refused XCLIENT", "backend", b.Name, "reply", rep.String())
			return greeting, nil
		}
		greeting = rep
	}
	return greeting, nil
}

// auth logs in to the backend with creds: AUTH PLAIN with an initial
// response (RFC 4954, 4616), or AUTH LOGIN for a backend that offers only
// that, unless creds has an Authzid (errNoPlain). A refusal comes back as
// the backend's *SMTPError.
//
// It speaks on the raw connection, not through go-smtp's client, whose Auth
// answers a refusal with "*", which Postfix takes for an attack and hangs
// up on ("221 2.7.0 Error: I can break rules, too. Goodbye."), so that the
// client could not try again. go-smtp's client is idle here, and it reads
// whole replies and does not pipeline, so neither reader holds a byte.
func (bk *backend) auth(creds protocols.Credentials) error {
	b := bk.b
	b.SetDeadline(time.Now().Add(bk.authTimeout()))
	defer b.SetDeadline(time.Time{})
	b64 := base64.StdEncoding.EncodeToString
	var rep reply
	var err error
	if creds.Mech != "" {
		// A new backend for a client logged in with a token: the message
		// once more, and no challenge can be relayed any more.
		rep, err = command(b, "AUTH "+creds.Mech+" "+b64([]byte(creds.Message)))
	} else if creds.Authzid != "" && !bk.c.SupportsAuth("PLAIN") {
		return errNoPlain // AUTH LOGIN cannot carry it
	} else if !bk.c.SupportsAuth("PLAIN") && bk.c.SupportsAuth("LOGIN") {
		rep, err = saslSteps(b, "AUTH LOGIN", b64([]byte(creds.Username)), b64([]byte(creds.Password)))
	} else {
		ir := b64([]byte(creds.Authzid + "\x00" + creds.Username + "\x00" + string(creds.Password)))
		rep, err = saslSteps(b, "AUTH PLAIN "+ir, ir) // the response again if 334 asks for it
	}
	switch {
	case err != nil:
		return err
	case rep.code == 235:
		bk.authed = true
		return nil
	case rep.code == 334:
		command(b, "*") // more challenges than the mechanism has
		return fmt.Errorf("%w: AUTH goes on: %s", errBackend, rep)
	}
	return rep.err()
}

// authTimeout bounds one step of a backend login.
func (bk *backend) authTimeout() time.Duration {
	if bk.loginTimeout > 0 {
		return bk.loginTimeout
	}
	return backendTimeout
}

// saslSteps sends the AUTH command and then each response for as long as
// the backend answers 334, and returns the first other reply.
func saslSteps(b *protocols.Backend, cmd string, responses ...string) (reply, error) {
	rep, err := command(b, cmd)
	for _, r := range responses {
		if err != nil || rep.code != 334 {
			break
		}
		rep, err = command(b, r)
	}
	return rep, err
}

// quit says goodbye without waiting for the answer, and closes.
func (bk *backend) quit() {
	bk.stop()
	bk.b.SetWriteDeadline(time.Now().Add(quitTimeout))
	io.WriteString(bk.b.Conn, "QUIT\r\n")
	bk.b.Close()
}

// close closes at once; a DATA in progress is thereby aborted.
func (bk *backend) close() {
	bk.stop()
	bk.b.Close()
}
