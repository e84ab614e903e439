// Package pop3 is mailproxy's POP3: the client dialogue before login
// (RFC 1939 USER, PASS, APOP and QUIT; CAPA of RFC 2449; STLS of RFC 2595;
// AUTH of RFC 5034 with PLAIN (RFC 4616) and LOGIN, and OAUTHBEARER
// (RFC 7628) and XOAUTH2 passed through to the backend; the response codes of
// RFC 2449 and RFC 3206), the backend dialogue (greeting, STLS, Dovecot's
// XCLIENT, login) and the health probe. After login the proxy relays bytes.
//
// On a listener with apop = true the backend is picked when the client
// connects, before the user is known, because an APOP digest can only be
// checked against the timestamp of the greeting that backend sent.
package pop3

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

// maxErrors is how many bad commands and failed logins a client may have
// before login; the last one closes the connection.
const maxErrors = 10

// defaultMaxLine bounds a line when the session does not say.
const defaultMaxLine = 8 << 10

// The replies the proxy itself gives. Backend rejections are relayed as
// the backend worded them instead.
const (
	replyUnavailable = "-ERR [SYS/TEMP] Service unavailable, try again later."
	replyNeedTLS     = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections, use STLS first."
	replyAuthFailed  = "-ERR [AUTH] Authentication failed."
	replyRefused     = "-ERR [SYS/TEMP] Too many failed logins, try again later."
)

// errTooManyErrors ends a session that kept sending bad commands.
var errTooManyErrors = errors.New("too many errors before login")

// Handler is the POP3 protocols.Handler. The zero value is ready to use.
type Handler struct{}

var _ protocols.Handler = Handler{}

// front is the state of one client dialogue before login.
type front struct {
	s      *protocols.Session
	conn   net.Conn
	r      *bufio.Reader
	tls    bool
	errors int
	user   string             // from USER, waiting for PASS
	fixed  *protocols.Backend // apop listener: the backend picked at connect
	// kept is the backend that refused keptUser's last login, kept open
	// so that the client's next try of the same user goes there too, as
	// it would talking to that server directly.
	kept     *protocols.Backend
	keptUser string
}

// Serve implements protocols.Handler.
func (Handler) Serve(ctx context.Context, s *protocols.Session) (relay *protocols.Relay, err error) {
	f := &front{s: s, tls: s.TLSActive}
	f.setConn(s.Conn)
	defer func() {
		protocols.PutReader(f.r) // the relay has a copy of what it held
		if f.kept != nil {
			quit(f.kept)
		}
	}()
	greeting := "+OK mailproxy ready."
	if s.APOP {
		if greeting, err = f.connectFixed(ctx); err != nil {
			f.reply(replyUnavailable)
			return nil, err
		}
		defer func() {
			if relay == nil {
				quit(f.fixed)
			}
		}()
	}
	if err := f.reply("%s", greeting); err != nil {
		return nil, err
	}
	for {
		line, err := protocols.ReadLine(f.r, f.maxLine())
		if errors.Is(err, protocols.ErrLineTooLong) {
			if err := f.bad("Line too long."); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		cmd, err := parseCommand(line)
		if err != nil {
			if err := f.bad(err.Error()); err != nil {
				return nil, err
			}
			continue
		}
		relay, done, err := f.dispatch(ctx, cmd)
		if err = f.answer(ctx, err); relay != nil || done || err != nil {
			return relay, err
		}
	}
}

// connectFixed picks the backend of an APOP listener and returns its
// greeting, whose timestamp the client's digest is computed over.
func (f *front) connectFixed(ctx context.Context) (string, error) {
	b, err := f.s.Dial(ctx, "", greet)
	if err != nil {
		f.s.Log.Warn("apop: no backend", "err", err)
		return "", fmt.Errorf("apop: %w", err)
	}
	if err := prepare(b, f.s); err != nil {
		b.Fail("prepare: " + err.Error())
		b.Close()
		f.s.Log.Warn("apop: backend failed", "backend", b.Name, "err", err)
		return "", fmt.Errorf("apop: backend %s: %w", b.Name, err)
	}
	f.fixed = b
	return b.Greeting, nil
}

// setConn switches to a new connection (after STLS) with a fresh reader:
// whatever the client sent before the handshake is dropped here.
func (f *front) setConn(c net.Conn) {
	if f.r != nil {
		protocols.PutReader(f.r)
	}
	f.conn = c
	f.r = protocols.NewReader(c)
}

func (f *front) maxLine() int {
	if f.s.MaxLine > 0 {
		return f.s.MaxLine
	}
	return defaultMaxLine
}

func (f *front) reply(format string, args ...any) error {
	_, err := fmt.Fprintf(f.conn, format+"\r\n", args...)
	return err
}

// bad answers a bad command with -ERR; too many of them end the connection.
func (f *front) bad(msg string) error {
	if f.errors++; f.errors >= maxErrors {
		f.reply("-ERR Too many errors, closing connection.")
		return errTooManyErrors
	}
	return f.reply("-ERR %s", msg)
}

// rejected sends a failed login's reply, which counts as an error.
func (f *front) rejected(ctx context.Context, line string) error {
	f.s.FailDelay(ctx)
	if err := f.reply("%s", line); err != nil {
		return err
	}
	if f.errors++; f.errors >= maxErrors {
		return errTooManyErrors
	}
	return nil
}

func (f *front) loginAllowed() bool { return f.tls || !f.s.RequireTLS }

// capabilities lists what a client may use now (RFC 2449 §5): login
// methods only where a login would be accepted, STLS only before TLS.
func (f *front) capabilities() []string {
	caps := []string{"CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"}
	if f.s.TLS != nil && !f.tls {
		caps = append(caps, "STLS")
	}
	if f.loginAllowed() {
		caps = append(caps, "USER", "SASL "+strings.Join(f.mechs(), " "))
	}
	return append(caps, "IMPLEMENTATION mailproxy")
}

// dispatch runs one command. done means the client quit.
func (f *front) dispatch(ctx context.Context, cmd command) (relay *protocols.Relay, done bool, err error) {
	switch cmd.verb {
	case "CAPA":
		err = writeMulti(f.conn, "+OK Capability list follows", f.capabilities())
	case "QUIT":
		f.reply("+OK mailproxy signing off.")
		return nil, true, nil
	case "STLS":
		err = f.startTLS(ctx)
	case "USER":
		err = f.userCommand(cmd.arg)
	case "PASS":
		return f.pass(ctx, cmd.arg)
	case "AUTH":
		return f.auth(ctx, cmd.arg)
	case "APOP":
		return f.apop(ctx, cmd.arg)
	case "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "LAST":
		err = bad("Log in first.")
	default:
		err = bad("Unknown command.")
	}
	return nil, false, err
}

// startTLS is STLS (RFC 2595 §4). Anything pipelined behind it is dropped
// with the old reader, and a USER given before it is forgotten.
func (f *front) startTLS(ctx context.Context) error {
	if f.s.TLS == nil || f.tls {
		return bad("STLS not available.")
	}
	if err := f.reply("+OK Begin TLS negotiation now."); err != nil {
		return err
	}
	tc, err := mtls.Handshake(ctx, f.conn, f.s.TLS, true)
	if err != nil {
		return err
	}
	f.tls, f.user = true, ""
	f.setConn(tc)
	f.s.Conn = tc // so the proxy sees the TLS state (PROXY v2 headers)
	return nil
}

func (f *front) userCommand(arg string) error {
	switch {
	case !f.loginAllowed():
		return bad(strings.TrimPrefix(replyNeedTLS, "-ERR "))
	case arg == "":
		return bad("USER needs a user name.")
	}
	f.user = arg
	return f.reply("+OK")
}

func (f *front) pass(ctx context.Context, arg string) (*protocols.Relay, bool, error) {
	if f.user == "" {
		return nil, false, bad("USER first.")
	}
	creds := protocols.Credentials{Username: f.user, Password: protocols.Password(arg)}
	f.user = ""
	return f.login(ctx, creds)
}

// auth is AUTH (RFC 5034): with no argument it lists the mechanisms, as
// many clients ask; otherwise it runs a PLAIN or LOGIN exchange.
func (f *front) auth(ctx context.Context, arg string) (*protocols.Relay, bool, error) {
	if !f.loginAllowed() {
		return nil, false, bad(strings.TrimPrefix(replyNeedTLS, "-ERR "))
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	if mech == "" {
		return nil, false, writeMulti(f.conn, "+OK", f.mechs())
	}
	if protocols.IsPassthrough(mech) && f.offers(mech) {
		return f.authPassthrough(ctx, mech, ir, hasIR)
	}
	var creds protocols.Credentials
	srv, err := protocols.NewSASLServer(mech, &creds)
	if err != nil {
		return nil, false, bad("Unsupported authentication mechanism.")
	}
	var resp []byte
	if hasIR {
		if resp, err = protocols.DecodeSASL(ir); err != nil {
			return nil, false, bad("Invalid base64 initial response.")
		}
	}
	switch err = protocols.SASLExchange(srv, resp, f.challenge); {
	case err == nil:
		return f.login(ctx, creds)
	case errors.Is(err, protocols.ErrSASLFailed):
		f.s.Log.Info("login failed: bad SASL response", "mechanism", strings.ToUpper(mech))
		return nil, false, rejected(replyAuthFailed)
	}
	return nil, false, saslReply(err)
}

// challenge sends one SASL challenge and reads the client's answer.
func (f *front) challenge(ch []byte) ([]byte, error) {
	if err := f.reply("+ %s", base64.StdEncoding.EncodeToString(ch)); err != nil {
		return nil, err
	}
	return protocols.ReadSASLResponse(f.r, f.maxLine())
}

// saslReply is the reply to a SASL exchange the client broke off or got
// wrong; other errors end the session.
func saslReply(err error) error {
	switch {
	case errors.Is(err, protocols.ErrLineTooLong):
		return bad("Response too long.")
	case errors.Is(err, protocols.ErrSASLCancelled):
		return bad("Authentication cancelled.")
	case errors.Is(err, protocols.ErrSASLEncoding):
		return bad("Invalid base64 response.")
	}
	return err
}

// apop is APOP name digest (RFC 1939 §7), passed to the fixed backend
// unchanged: only it knows the timestamp and the shared secret.
func (f *front) apop(ctx context.Context, arg string) (*protocols.Relay, bool, error) {
	fields := strings.Split(arg, " ")
	switch {
	case f.fixed == nil, f.s.Authenticate != nil: // mailproxy cannot check a digest
		return nil, false, bad("APOP not available.")
	case !f.loginAllowed():
		return nil, false, bad(strings.TrimPrefix(replyNeedTLS, "-ERR "))
	case len(fields) != 2 || fields[0] == "" || fields[1] == "":
		return nil, false, bad("APOP needs a user name and a digest.")
	}
	f.s.User = fields[0]
	if err := f.s.LoginAllowed(ctx, fields[0]); err != nil {
		return nil, false, refused()
	}
	ok, text, err := backendAPOP(f.fixed, arg)
	return f.finish(ctx, f.fixed, fields[0], ok, text, err)
}

// login logs in to the backend the proxy picks for the user (or the fixed
// one of an APOP listener) with the credentials Session.BackendCredentials
// gives. A rejection is relayed with the backend's own text and the client
// may try again.
func (f *front) login(ctx context.Context, creds protocols.Credentials) (*protocols.Relay, bool, error) {
	f.s.User = creds.Username
	if !safeArg(creds.Username) || !safeArg(string(creds.Password)) || !safeArg(creds.Authzid) {
		f.s.Log.Info("login failed: control characters in credentials", "user", creds.Username)
		return nil, false, rejected(replyAuthFailed)
	}
	if err := f.s.LoginAllowed(ctx, creds.Username); err != nil {
		return nil, false, refused()
	}
	back, err := f.s.BackendCredentials(ctx, creds)
	if errors.Is(err, protocols.ErrAuthUnavailable) {
		return nil, false, unavailable(nil)
	}
	if err != nil {
		return nil, false, rejected(replyAuthFailed)
	}
	if b := f.retryBackend(creds.Username); b != nil {
		ok, text, err := backendLogin(b, back, f.relayChallenge)
		if err == nil || errors.Is(err, errClientGone) || errors.Is(err, errNoMech) {
			return f.finish(ctx, b, creds.Username, ok, text, err)
		}
		// It hung up after the failed try (some servers count them):
		// the client's doing, not the backend's. Start afresh.
		f.s.Log.Info("backend closed after a failed login", "user", creds.Username, "backend", b.Name, "err", err)
		b.Close()
	}
	if b := f.fixed; b != nil || back.Mech != "" {
		if b == nil {
			var err error
			if b, err = f.s.Dial(ctx, creds.Username, greet); err != nil {
				f.s.Log.Warn("login failed: no backend", "user", creds.Username, "err", err)
				return nil, false, unavailable(nil)
			}
			if err := prepare(b, f.s); err != nil {
				return f.finish(ctx, b, creds.Username, false, "", err)
			}
		}
		ok, text, err := backendLogin(b, back, f.relayChallenge)
		return f.finish(ctx, b, creds.Username, ok, text, err)
	}
	// A login that needs no client round trip runs inside the dial's
	// hello: a backend that greets and then hangs, hangs up or talks
	// nonsense at CAPA or login is charged and the next one tried, like
	// one that never greets. An -ERR is the client's: it ends the hello
	// without error, and finish relays it and keeps the backend for the
	// client's next try. (A passthrough mechanism relays the backend's
	// challenges to the client, so it logs in after the dial, above.)
	var ok bool
	var text string
	var loginErr error
	b, err := f.s.Dial(ctx, creds.Username, func(ctx context.Context, b *protocols.Backend) error {
		if err := greet(ctx, b); err != nil {
			return err
		}
		if err := prepare(b, f.s); err != nil {
			return err
		}
		ok, text, loginErr = backendLogin(b, back, nil)
		if loginErr != nil && !errors.Is(loginErr, errNoPlain) {
			return fmt.Errorf("login: %w", loginErr)
		}
		return nil
	})
	if err != nil {
		f.s.Log.Warn("login failed: no backend", "user", creds.Username, "err", err)
		return nil, false, unavailable(nil)
	}
	return f.finish(ctx, b, creds.Username, ok, text, loginErr)
}

// retryBackend hands over the backend kept after user's failed login, or
// nil. A kept backend for another user is let go: that user's session
// may belong elsewhere.
func (f *front) retryBackend(user string) *protocols.Backend {
	b := f.kept
	if b == nil {
		return nil
	}
	f.kept = nil
	if f.keptUser != user {
		quit(b)
		return nil
	}
	return b
}

// finish answers the client after a backend login attempt. A backend that
// failed is closed; one that rejected is kept for the client's next try
// (the fixed backend of an APOP listener always is).
func (f *front) finish(ctx context.Context, b *protocols.Backend, user string, ok bool, text string, err error) (*protocols.Relay, bool, error) {
	switch {
	case err != nil:
		if !errors.Is(err, errNoPlain) && !errors.Is(err, errNoMech) && !errors.Is(err, errClientGone) { // not the backend's health
			b.Fail("login: " + err.Error())
		}
		b.Close()
		f.s.Log.Warn("login failed: backend error", "user", user, "backend", b.Name, "err", err)
		if b == f.fixed {
			return nil, false, unavailable(fmt.Errorf("backend %s: %w", b.Name, err)) // nothing left to log in to
		}
		return nil, false, unavailable(nil)
	case !ok:
		if b != f.fixed {
			f.kept, f.keptUser = b, user
		} else {
			// Some servers hang up after a refused login: the fixed
			// backend failing from now on is not its health.
			b.Fail = func(string) {}
		}
		f.s.Log.Info("login rejected by backend", "user", user, "backend", b.Name)
		return nil, false, rejected(text)
	}
	if err := f.reply("%s", text); err != nil {
		b.Close()
		return nil, false, err
	}
	f.s.LoginSucceeded()
	f.s.Log.Info("login", "user", user, "backend", b.Name)
	return &protocols.Relay{
		Client: f.conn, ClientBuf: protocols.Buffered(f.r),
		Backend: b, BackBuf: b.TakeBuffered(),
	}, false, nil
}
