package managesieve

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"

	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

// The replies the proxy itself gives. Backend rejections are relayed as
// the backend worded them instead.
const (
	replyUnavailable = `NO (TRYLATER) "Service unavailable, try again later."`
	replyNeedTLS     = `NO (ENCRYPT-NEEDED) "Use STARTTLS first."`
	replyAuthFailed  = `NO "Authentication failed."`
)

// errTooManyErrors ends a session that kept sending bad commands.
var errTooManyErrors = errors.New("too many errors before login")

// front is the state of one client dialogue before login.
type front struct {
	h      *Handler
	s      *protocols.Session
	conn   net.Conn
	rd     *reader
	tls    bool
	errors int
}

// Serve implements protocols.Handler.
func (h *Handler) Serve(ctx context.Context, s *protocols.Session) (*protocols.Relay, error) {
	f := &front{h: h, s: s, tls: s.TLSActive}
	f.setConn(s.Conn)
	if err := f.capabilities(`OK "mailproxy ready."`); err != nil {
		return nil, err
	}
	for {
		toks, err := f.rd.readTokens()
		var syn errSyntax
		switch {
		case errors.As(err, &syn):
			if err := f.bad(syn.msg); err != nil {
				return nil, err
			}
			continue
		case errors.Is(err, errFatal):
			f.reply(`BYE "Literal too big."`)
			return nil, err
		case err != nil:
			return nil, err
		}
		if len(toks) == 0 {
			if err := f.bad("Empty command."); err != nil {
				return nil, err
			}
			continue
		}
		relay, done, err := f.dispatch(ctx, toks)
		if relay != nil || done || err != nil {
			return relay, err
		}
	}
}

// setConn switches to a new connection (after STARTTLS) with a fresh
// reader: whatever the client sent before the handshake is dropped here.
func (f *front) setConn(c net.Conn) {
	max := f.s.MaxLine
	if max <= 0 {
		max = 8 << 10
	}
	f.conn = c
	f.rd = &reader{r: bufio.NewReaderSize(c, 4096), max: max}
}

func (f *front) reply(format string, args ...any) error {
	_, err := fmt.Fprintf(f.conn, format+"\r\n", args...)
	return err
}

// bad answers a command that cannot be run; too many of them end the
// connection.
func (f *front) bad(msg string) error {
	if f.errors++; f.errors >= maxErrors {
		f.reply(`BYE "Too many invalid commands."`)
		return errTooManyErrors
	}
	return f.reply("NO %s", quote(msg, false))
}

func (f *front) loginAllowed() bool { return f.tls || !f.s.RequireTLS }

// capabilities sends the capability lines and then final (RFC 5804 §1.7):
// the backends' Sieve capabilities, with mailproxy's SASL and STARTTLS.
func (f *front) capabilities(final string) error {
	var b strings.Builder
	sasl := ""
	if f.loginAllowed() {
		sasl = "PLAIN LOGIN"
	}
	caps := append([]capability{{name: "SASL", value: sasl, hasValue: true}}, f.h.backendCaps()...)
	if f.s.TLS != nil && !f.tls {
		caps = append(caps, capability{name: "STARTTLS"})
	}
	for _, c := range caps {
		b.WriteString(c.wire())
		b.WriteString("\r\n")
	}
	b.WriteString(final)
	return f.reply("%s", b.String())
}

// dispatch runs one command. done means the client logged out.
func (f *front) dispatch(ctx context.Context, toks []token) (relay *protocols.Relay, done bool, err error) {
	name, args := strings.ToUpper(toks[0].s), toks[1:]
	if toks[0].str {
		name = "" // a command name is an atom
	}
	switch name {
	case "CAPABILITY":
		err = f.capabilities(`OK "Capability completed."`)
	case "NOOP":
		err = f.noop(args)
	case "LOGOUT":
		f.reply(`OK "Logout completed."`)
		return nil, true, nil
	case "STARTTLS":
		err = f.startTLS(ctx)
	case "AUTHENTICATE":
		return f.authenticate(ctx, args)
	default:
		err = f.bad("Authenticate first.")
	}
	return nil, false, err
}

// noop echoes the optional tag (RFC 5804 §2.13).
func (f *front) noop(args []token) error {
	switch {
	case len(args) == 0:
		return f.reply(`OK "NOOP completed."`)
	case len(args) == 1 && args[0].str:
		return f.reply(`OK (TAG %s) "NOOP completed."`, quote(args[0].s, false))
	}
	return f.bad("NOOP takes one string at most.")
}

func (f *front) startTLS(ctx context.Context) error {
	if f.s.TLS == nil || f.tls {
		return f.bad("STARTTLS not available.")
	}
	if err := f.reply(`OK "Begin TLS negotiation now."`); err != nil {
		return err
	}
	tc, err := mtls.Handshake(ctx, f.conn, f.s.TLS, true)
	if err != nil {
		return err
	}
	f.tls = true
	f.setConn(tc)
	f.s.Conn = tc // so the proxy sees the TLS state (PROXY v2 headers)
	return f.capabilities(`OK "TLS negotiation successful."`)
}

// authenticate runs a SASL exchange (RFC 5804 §2.1) and then the login.
func (f *front) authenticate(ctx context.Context, args []token) (*protocols.Relay, bool, error) {
	if len(args) < 1 || len(args) > 2 {
		return nil, false, f.bad("AUTHENTICATE needs a mechanism and at most an initial response.")
	}
	if !f.loginAllowed() {
		return nil, false, f.reply(replyNeedTLS)
	}
	var creds protocols.Credentials
	srv, err := protocols.NewSASLServer(args[0].s, &creds)
	if err != nil {
		return nil, false, f.bad("Unsupported authentication mechanism.")
	}
	var resp []byte // nil: no initial response
	if len(args) == 2 && args[1].s != "" {
		if resp, err = base64.StdEncoding.DecodeString(args[1].s); err != nil {
			return nil, false, f.bad("Invalid base64 initial response.")
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			return nil, false, f.failed(ctx, replyAuthFailed)
		}
		if done {
			return f.login(ctx, creds)
		}
		if resp, err = f.saslStep(challenge); err != nil {
			var syn errSyntax
			if errors.As(err, &syn) {
				return nil, false, f.bad(syn.msg)
			}
			return nil, false, err
		}
	}
}

// saslStep sends a challenge and reads the client's answer: a string, or
// "*" to cancel (RFC 5804 §2.1).
func (f *front) saslStep(challenge []byte) ([]byte, error) {
	if err := f.reply("%s", quote(base64.StdEncoding.EncodeToString(challenge), false)); err != nil {
		return nil, err
	}
	toks, err := f.rd.readTokens()
	if err != nil {
		return nil, err
	}
	if len(toks) != 1 || !toks[0].str {
		return nil, errSyntax{"Expected a string."}
	}
	if toks[0].s == "*" {
		return nil, errSyntax{"Authentication cancelled."}
	}
	resp, err := base64.StdEncoding.DecodeString(toks[0].s)
	if err != nil {
		return nil, errSyntax{"Invalid base64 response."}
	}
	return resp, nil
}

// failed answers a failed login after the auth failure delay; it counts
// as an error.
func (f *front) failed(ctx context.Context, reply string) error {
	f.s.FailDelay(ctx)
	if f.errors++; f.errors >= maxErrors {
		f.reply(`BYE "Too many failed logins."`)
		return errTooManyErrors
	}
	_, err := f.conn.Write([]byte(strings.TrimSuffix(reply, "\r\n") + "\r\n"))
	return err
}

// login logs in to the backend the proxy picks for the user, with the
// credentials Session.BackendCredentials gives. A rejection is relayed
// with the backend's own text and the client may try again.
func (f *front) login(ctx context.Context, creds protocols.Credentials) (*protocols.Relay, bool, error) {
	f.s.User = creds.Username
	if err := f.s.LoginAllowed(ctx, creds.Username); err != nil {
		return nil, false, f.reply(`NO (TRYLATER) "Too many failed logins, try again later."`)
	}
	back, err := f.s.BackendCredentials(ctx, creds)
	if errors.Is(err, protocols.ErrAuthUnavailable) {
		return nil, false, f.reply(`NO (TRYLATER) "Authentication service unavailable, try again later."`)
	}
	if err != nil {
		return nil, false, f.failed(ctx, replyAuthFailed)
	}
	b, err := f.s.Dial(ctx, creds.Username, f.h.hello(f.s, f.conn.RemoteAddr()))
	if err != nil {
		f.s.Log.Warn("login failed: no backend", "user", creds.Username, "err", err)
		return nil, false, f.reply(replyUnavailable)
	}
	resp, err := backendLogin(b, back)
	if err != nil {
		b.Close()
		f.s.Log.Warn("login failed: backend error", "user", creds.Username, "backend", b.Name, "err", err)
		return nil, false, f.reply(replyUnavailable)
	}
	if resp.kind() != "OK" {
		b.Close()
		f.s.Log.Info("login rejected by backend", "user", creds.Username, "backend", b.Name)
		return nil, false, f.failed(ctx, string(resp.raw))
	}
	if _, err := f.conn.Write(resp.raw); err != nil {
		b.Close()
		return nil, false, err
	}
	f.s.LoginSucceeded()
	f.s.Log.Info("login", "user", creds.Username, "backend", b.Name)
	return &protocols.Relay{
		Client: f.conn, ClientBuf: protocols.Buffered(f.rd.r),
		Backend: b, BackBuf: protocols.Buffered(b.Reader),
	}, false, nil
}
