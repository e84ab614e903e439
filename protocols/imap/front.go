// Package imap is mailproxy's IMAP: the client dialogue before login
// (RFC 9051 and RFC 3501: CAPABILITY, NOOP, ID (RFC 2971), LOGOUT,
// STARTTLS, LOGIN, AUTHENTICATE with SASL-IR (RFC 4959) and LITERAL+
// (RFC 7888); OAUTHBEARER (RFC 7628) and XOAUTH2 passed through to the
// backend), the backend dialogue (greeting, STARTTLS, ID forwarding,
// login), and the health probe. After login the proxy relays bytes.
package imap

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"

	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

// maxErrors is how many bad commands a client may send before login.
const maxErrors = 10

// Handler is the IMAP protocols.Handler. The zero value is ready to use.
type Handler struct{}

var _ protocols.Handler = Handler{}

// front is the state of one client dialogue before login.
type front struct {
	s      *protocols.Session
	conn   net.Conn
	rd     *reader
	tls    bool
	errors int
	id     []string // the client's ID fields, name/value pairs, for the backend
}

// Serve implements protocols.Handler.
func (Handler) Serve(ctx context.Context, s *protocols.Session) (*protocols.Relay, error) {
	f := &front{s: s, tls: s.TLSActive}
	f.setConn(s.Conn)
	defer func() { protocols.PutReader(f.rd.r) }() // the relay has a copy of what it held
	if err := f.reply("* OK [CAPABILITY %s] mailproxy ready.", f.capabilities()); err != nil {
		return nil, err
	}
	for {
		cmd, err := f.rd.readCommand()
		var syn errSyntax
		var fatal errFatal
		switch {
		case errors.As(err, &syn):
			if err := f.bad(cmd.tag, syn.msg); err != nil {
				return nil, err
			}
			continue
		case errors.As(err, &fatal):
			tag := cmd.tag
			if tag == "" {
				tag = "*"
			}
			f.reply("%s BAD %s\r\n* BYE Closing connection", tag, fatal.msg)
			return nil, err
		case err != nil:
			return nil, err
		}
		relay, done, err := f.dispatch(ctx, cmd)
		if err = f.answer(cmd.tag, err); relay != nil || done || err != nil {
			return relay, err
		}
	}
}

// setConn switches to a new connection (after STARTTLS) with a fresh
// reader: whatever the client sent before the handshake is dropped here.
func (f *front) setConn(c net.Conn) {
	if f.rd != nil {
		protocols.PutReader(f.rd.r)
	}
	f.conn = c
	f.rd = &reader{r: protocols.NewReader(c), w: c, max: f.s.MaxLine}
}

func (f *front) reply(format string, args ...any) error {
	_, err := fmt.Fprintf(f.conn, format+"\r\n", args...)
	return err
}

// bad answers a bad command; too many of them end the connection.
func (f *front) bad(tag, msg string) error {
	if tag == "" {
		tag = "*"
	}
	if f.errors++; f.errors >= maxErrors {
		f.reply("* BYE Too many invalid commands")
		return errors.New("too many invalid commands")
	}
	return f.reply("%s BAD %s", tag, msg)
}

func (f *front) loginAllowed() bool { return f.tls || !f.s.RequireTLS }

// capabilities lists what a client may use now, before login.
func (f *front) capabilities() string {
	caps := []string{"IMAP4rev1", "LITERAL+", "SASL-IR", "ID"}
	if f.s.TLS != nil && !f.tls {
		caps = append(caps, "STARTTLS")
	}
	if f.loginAllowed() {
		caps = append(caps, "AUTH=PLAIN", "AUTH=LOGIN")
		for _, m := range f.passMechs() {
			caps = append(caps, "AUTH="+m)
		}
	} else {
		caps = append(caps, "LOGINDISABLED")
	}
	return strings.Join(caps, " ")
}

// dispatch runs one command. done means the client logged out.
func (f *front) dispatch(ctx context.Context, cmd *command) (relay *protocols.Relay, done bool, err error) {
	switch cmd.name {
	case "CAPABILITY":
		err = f.reply("* CAPABILITY %s\r\n%s OK Capability completed.", f.capabilities(), cmd.tag)
	case "NOOP":
		err = f.reply("%s OK NOOP completed.", cmd.tag)
	case "ID":
		f.id = clientID(cmd.args)
		err = f.reply(`* ID ("name" "mailproxy")`+"\r\n%s OK ID completed.", cmd.tag)
	case "LOGOUT":
		f.reply("* BYE Logging out\r\n%s OK Logout completed.", cmd.tag)
		return nil, true, nil
	case "STARTTLS":
		err = f.startTLS(ctx, cmd)
	case "LOGIN":
		if len(cmd.args) != 2 {
			return nil, false, bad("LOGIN needs a user name and a password")
		}
		creds := protocols.Credentials{Username: cmd.args[0], Password: protocols.Password(cmd.args[1])}
		return f.login(ctx, cmd.tag, creds)
	case "AUTHENTICATE":
		return f.authenticate(ctx, cmd)
	default:
		err = bad("Command not allowed before login")
	}
	return nil, false, err
}

func (f *front) startTLS(ctx context.Context, cmd *command) error {
	if f.s.TLS == nil || f.tls {
		return bad("STARTTLS not available")
	}
	if err := f.reply("%s OK Begin TLS negotiation now.", cmd.tag); err != nil {
		return err
	}
	tc, err := mtls.Handshake(ctx, f.conn, f.s.TLS, true)
	if err != nil {
		return err
	}
	f.tls = true
	f.setConn(tc)
	f.s.Conn = tc // so the proxy sees the TLS state (PROXY v2 headers)
	return nil
}

// authenticate runs a SASL exchange (RFC 9051 §6.2.2) and then the login.
func (f *front) authenticate(ctx context.Context, cmd *command) (*protocols.Relay, bool, error) {
	if len(cmd.args) < 1 || len(cmd.args) > 2 {
		return nil, false, bad("AUTHENTICATE needs a mechanism")
	}
	if !f.loginAllowed() {
		return nil, false, errPrivacyRequired
	}
	if protocols.IsPassthrough(cmd.args[0]) && f.offers(cmd.args[0]) {
		return f.authPassthrough(ctx, cmd)
	}
	var creds protocols.Credentials
	srv, err := protocols.NewSASLServer(cmd.args[0], &creds)
	if err != nil {
		return nil, false, no("Unsupported authentication mechanism.")
	}
	var resp []byte
	if len(cmd.args) == 2 {
		if resp, err = protocols.DecodeSASL(cmd.args[1]); err != nil {
			return nil, false, bad("Invalid base64 initial response")
		}
	}
	err = protocols.SASLExchange(srv, resp, func(challenge []byte) ([]byte, error) {
		if err := f.reply("+ %s", base64.StdEncoding.EncodeToString(challenge)); err != nil {
			return nil, err
		}
		return protocols.ReadSASLResponse(f.rd.r, f.s.MaxLine)
	})
	switch {
	case err == nil:
		return f.login(ctx, cmd.tag, creds)
	case errors.Is(err, protocols.ErrSASLFailed):
		f.s.FailDelay(ctx)
		return nil, false, errCredentials
	case errors.Is(err, protocols.ErrLineTooLong):
		return nil, false, bad("Response too long")
	case errors.Is(err, protocols.ErrSASLCancelled):
		return nil, false, bad("Authentication cancelled.")
	case errors.Is(err, protocols.ErrSASLEncoding):
		return nil, false, bad("Invalid base64 response")
	}
	return nil, false, err
}

// clientID keeps what a client said in ID (RFC 2971: at most 30 pairs,
// fields of at most 30 bytes, values of at most 1024) so the backend's log
// shows the real client program. Fields starting with "x-" are dropped:
// only mailproxy may tell the backend where a client connects from.
func clientID(args []string) []string {
	var out []string
	for i := 0; i+1 < len(args) && len(out) < 60; i += 2 {
		k, v := args[i], args[i+1]
		if len(k) > 30 || len(v) > 1024 || strings.HasPrefix(strings.ToLower(k), "x-") {
			continue
		}
		out = append(out, k, v)
	}
	return out
}

// login logs in to the backend the proxy picks for the user, with the
// credentials Session.BackendCredentials gives. A rejection is relayed with
// the backend's own text and the client may try again.
func (f *front) login(ctx context.Context, tag string, creds protocols.Credentials) (*protocols.Relay, bool, error) {
	f.s.User = creds.Username
	if !f.loginAllowed() {
		return nil, false, errPrivacyRequired
	}
	if err := f.s.LoginAllowed(ctx, creds.Username); err != nil {
		return nil, false, no("[UNAVAILABLE] Too many failed logins, try again later.")
	}
	back, err := f.s.BackendCredentials(ctx, creds)
	if errors.Is(err, protocols.ErrAuthUnavailable) {
		return nil, false, no("[UNAVAILABLE] Authentication service unavailable, try again later.")
	}
	if err != nil {
		f.s.FailDelay(ctx)
		return nil, false, errCredentials
	}
	// A login that needs no client round trip runs inside the dial's
	// hello: a backend that greets and then hangs, hangs up or talks
	// nonsense at login is charged and the next one tried, like one that
	// never greets. A NO is the client's: it ends the hello without error
	// and is relayed below. A passthrough mechanism relays the backend's
	// challenges to the client, so it logs in after the dial.
	var ok bool
	var text string
	var loginErr error
	hello := greet
	if back.Mech == "" {
		hello = func(ctx context.Context, b *protocols.Backend) error {
			if err := greet(ctx, b); err != nil {
				return err
			}
			ok, text, loginErr = backendLogin(ctx, b, back, f.s, f.conn.RemoteAddr(), f.id, nil)
			if loginErr != nil && !errors.Is(loginErr, errNoLogin) {
				return fmt.Errorf("login: %w", loginErr)
			}
			return nil
		}
	}
	b, err := f.s.Dial(ctx, creds.Username, hello)
	if err != nil {
		f.s.Log.Warn("login failed: no backend", "user", creds.Username, "err", err)
		return nil, false, errUnavailable
	}
	if back.Mech != "" {
		ok, text, loginErr = backendLogin(ctx, b, back, f.s, f.conn.RemoteAddr(), f.id, f.relayChallenge)
	}
	if err := loginErr; err != nil {
		b.Close()
		f.s.Log.Warn("login failed: backend error", "user", creds.Username, "backend", b.Name, "err", err)
		return nil, false, errUnavailable
	}
	if !ok {
		b.Close()
		f.s.Log.Info("login rejected by backend", "user", creds.Username, "backend", b.Name)
		f.s.FailDelay(ctx)
		return nil, false, relayed(text)
	}
	if err := f.reply("%s %s", tag, text); err != nil {
		b.Close()
		return nil, false, err
	}
	f.s.LoginSucceeded()
	f.s.Log.Info("login", "user", creds.Username, "backend", b.Name)
	return &protocols.Relay{
		Client: f.conn, ClientBuf: protocols.Buffered(f.rd.r),
		Backend: b, BackBuf: b.TakeBuffered(),
	}, false, nil
}
