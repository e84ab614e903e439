package smtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// The replies mailproxy makes itself. Everything else the client hears
// about its mail is the backend's own reply.
var (
	errUnavailable  = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Service not available, try again later"}
	errTryLater     = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Service not available, try again later"}
	errBackendLost  = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Connection to the mail server lost, message not accepted, try again later"}
	errAuthRequired = &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errTLSRequired  = &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errAuthTemp     = &gosmtp.SMTPError{Code: 454, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	errAuthInvalid  = &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthInTx     = &gosmtp.SMTPError{Code: 503, EnhancedCode: gosmtp.EnhancedCode{5, 5, 1}, Message: "AUTH not permitted during a mail transaction"}
	errNo8BitMIME   = &gosmtp.SMTPError{Code: 555, EnhancedCode: gosmtp.EnhancedCode{5, 5, 4}, Message: "BODY=8BITMIME not supported by the mail server"}
	errLineTooLong  = &gosmtp.SMTPError{Code: 500, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	errAborted      = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Message transfer aborted"}
	errBadHelo      = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Invalid HELO name"}
	errBadSender    = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Bad sender address syntax"}
	errBadRcpt      = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Bad recipient address syntax"}
	errBadArgs      = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 4}, Message: "Invalid command arguments"}
)

// maxHelo is the longest HELO name passed on: a domain is at most 255
// octets (RFC 5321 §4.5.3.1.2), an address literal less.
const maxHelo = 255

// validWord reports whether s, a HELO name or an address from the client,
// can go on a backend's command line: no control characters (a bare CR
// would end the line early for some and make go-smtp's client refuse it),
// which neither a domain, an address literal nor a mailbox may hold
// (RFC 5321 §4.1.2).
func validWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// refusal is the reply to a failure the client caused
// (protocols.ErrClientFault): the backend's own 5xx when it gave one, else
// 501 5.5.4. ok is false for any other failure.
func refusal(err error) (reply *gosmtp.SMTPError, ok bool) {
	if !errors.Is(err, protocols.ErrClientFault) {
		return nil, false
	}
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return errBadArgs, true
}

// front is one client connection's SMTP session. go-smtp's server calls it
// (it is both the gosmtp.Backend and the gosmtp.Session) and it mirrors each
// command to the connection's backend.
//
// The backend is picked at the client's first EHLO or HELO (go-smtp's
// NewSession): its EHLO reply is needed for the client's (SIZE, SMTPUTF8,
// DSN), and the client's HELO name for the backend's EHLO and XCLIENT. It
// serves every transaction of the connection; when it is lost, the next
// MAIL connects another one (logging in again for an authenticated client).
type front struct {
	ctx    context.Context // ends the session; cancel closes the backend
	cancel context.CancelFunc
	s      *protocols.Session
	fc     *frontConn
	srv    *gosmtp.Server // set by newServer; NewSession adapts it to the backend
	conn   *gosmtp.Conn   // go-smtp's connection, once the client said EHLO

	// mu serialises everything that talks to the backend. go-smtp calls the
	// session from the connection's goroutine, except Data after BDAT, which
	// runs on a goroutine of its own while the client may go on. go-smtp
	// makes such a Data return (it closes its pipe) before calling Reset or
	// Logout on Close, but not before AUTH or STARTTLS: those must not wait
	// for the lock (see login and Logout).
	mu            sync.Mutex
	helo          string
	back          *backend
	inTx          bool                   // the backend has a MAIL transaction open
	from          string                 // of the open transaction, for the log
	rcpts         int                    // accepted recipients of the open transaction
	creds         *protocols.Credentials // the client's login, for a new backend
	logoutPending atomic.Bool            // STARTTLS came during a BDAT Data
	backAuth      atomic.Bool            // the backend announced AUTH (smtp_auth = "optional" offers it then)
	err           error                  // why the session could not be served
	name          string                 // the client's name, once looked up
}

func newFront(ctx context.Context, s *protocols.Session, fc *frontConn) *front {
	ctx, cancel := context.WithCancel(ctx)
	return &front{ctx: ctx, cancel: cancel, s: s, fc: fc}
}

// NewSession implements gosmtp.Backend; go-smtp calls it at the first EHLO
// or HELO and again after STARTTLS. Without a backend the client gets 421
// and the connection ends.
func (f *front) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	helo := c.Hostname()
	if len(helo) > maxHelo || !validWord(helo) {
		return nil, errBadHelo // go-smtp forgets the name; the client may try again
	}
	f.conn, f.helo = c, helo
	if f.back != nil && f.back.helo != helo {
		f.rehello() // a new name after STARTTLS
	}
	if f.back == nil {
		if err := f.open(); err != nil {
			if se, ok := refusal(err); ok {
				return nil, se // the backend refused the name: the client may try another
			}
			f.fc.closeAfterReply()
			return nil, errUnavailable
		}
	}
	return f, nil
}

// clientName looks up the client's host name for XCLIENT NAME once per
// session; a temporary failure is asked again for the next backend.
func (f *front) clientName(ctx context.Context) string {
	if f.name == "" || f.name == nameTempFail {
		f.name = clientName(ctx, net.DefaultResolver, f.s.Conn.RemoteAddr())
	}
	return f.name
}

// rehello gives the backend the client's new HELO name (typically the EHLO
// after STARTTLS, the backend having been picked at the one before). RSET
// is what lets go-smtp's client say EHLO again. The caller holds mu.
func (f *front) rehello() {
	c := f.back.c
	err := c.Reset()
	if err == nil {
		err = c.Hello(f.helo)
	}
	if err != nil {
		f.drop(fmt.Errorf("EHLO again: %w", err))
		return
	}
	f.back.helo, f.inTx = f.helo, false
	f.adopt()
}

// open connects a backend, logs in to it again when the client has
// authenticated, and adapts what go-smtp announces to it. The caller holds mu.
func (f *front) open() error {
	if err := f.ctx.Err(); err != nil {
		return err // the session is ending
	}
	var bk *backend
	attrs := clientAttrs(f.s.Conn.RemoteAddr(), f.s.Conn.LocalAddr(), f.helo)
	b, err := f.s.Dial(f.ctx, "", func(ctx context.Context, b *protocols.Backend) (err error) {
		bk, err = greet(ctx, b, f.helo, attrs, f.clientName, f.s.Log)
		if err == nil {
			bk.loginTimeout = f.s.BackendTimeout
		}
		return err
	})
	if _, ok := refusal(err); ok {
		f.s.Log.Info("backend refused the client's HELO name", "helo", f.helo, "err", err)
		return err
	}
	if err != nil {
		f.s.Log.Warn("no backend for the session", "err", err)
		f.err = err
		return err
	}
	bk.stop = context.AfterFunc(f.ctx, func() { b.Close() })
	f.back = bk
	f.s.Log.Debug("backend ready", "backend", b.Name)
	if f.creds != nil {
		if err := bk.auth(*f.creds); err != nil {
			f.drop(fmt.Errorf("log in again: %w", err))
			return err
		}
	}
	f.adopt()
	return nil
}

// adopt announces to the client what the backend can take: SIZE never
// above the backend's (nor above max_size), SMTPUTF8 and DSN only when the
// backend has them, or go-smtp's client would refuse to pass them on.
func (f *front) adopt() {
	c := f.back.c
	limit := f.s.MaxSize
	if n, ok := c.MaxMessageSize(); ok && n > 0 && (limit == 0 || int64(n) < limit) {
		limit = int64(n)
	}
	f.srv.MaxMessageBytes = limit
	f.srv.EnableSMTPUTF8, _ = c.Extension("SMTPUTF8")
	f.srv.EnableDSN, _ = c.Extension("DSN")
	auth, _ := c.Extension("AUTH")
	f.backAuth.Store(auth)
}

// drop closes a backend connection that failed; the next MAIL opens a new
// one. The caller holds mu.
func (f *front) drop(why error) {
	bk := f.back
	f.back, f.inTx = nil, false
	bk.close()
	f.s.Log.Warn("backend connection dropped", "backend", bk.b.Name, "err", why)
}

// close ends the session's use of the backend, after go-smtp is done. A
// Data still sending a message the client abandoned (BDAT) is cut off.
func (f *front) close() {
	if !f.mu.TryLock() {
		f.cancel()
		f.mu.Lock()
	}
	defer f.mu.Unlock()
	if f.back != nil {
		f.back.quit()
		f.back = nil
	}
	f.cancel()
}

// backendReply turns what go-smtp's client returned into the client's
// reply. The backend's own *SMTPError goes back unwrapped, so go-smtp
// relays its code, enhanced code and text verbatim; a 421 too, but as 451,
// because the backend closes while the client's session goes on. Any
// other error means the connection broke: it is dropped and the client gets
// 451 4.4.2. The caller holds mu.
func (f *front) backendReply(err error, during string) error {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		if se.Code != 421 {
			return se
		}
		f.drop(fmt.Errorf("%s: %w", during, se))
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: se.EnhancedCode, Message: se.Message}
	}
	f.drop(fmt.Errorf("%s: %w", during, err))
	return errBackendLost
}

// stale says whether a MAIL failed because the backend connection was
// already gone (timed out, restarted): then no transaction was lost and a
// new connection is worth one try.
func stale(err error) bool {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return true
}

func (f *front) tlsActive() bool {
	if f.s.TLSActive {
		return true
	}
	_, ok := f.conn.TLSConnectionState()
	return ok
}

// Mail implements gosmtp.Session.
func (f *front) Mail(from string, opts *gosmtp.MailOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.s.SMTPAuth == "required" && f.creds == nil {
		if f.s.RequireTLS && !f.tlsActive() {
			return errTLSRequired
		}
		return errAuthRequired
	}
	if !validWord(from) {
		return errBadSender
	}
	for retry := true; ; retry = false {
		if f.back == nil {
			if err := f.open(); err != nil {
				if se, ok := refusal(err); ok {
					return se
				}
				return errTryLater
			}
		}
		err := f.startTx(from, opts)
		if err == nil {
			f.inTx, f.from, f.rcpts = true, from, 0
			f.fc.loggedIn() // a transaction: the login bound is met
			return nil
		}
		if se, ok := refusal(err); ok {
			return se
		}
		if !retry || !stale(err) {
			return f.backendReply(err, "MAIL")
		}
		f.drop(fmt.Errorf("MAIL: %w", err))
	}
}

// startTx sends MAIL, after RSET if go-smtp left a transaction open (a
// client that sent MAIL again without RSET).
func (f *front) startTx(from string, opts *gosmtp.MailOptions) error {
	if f.settle(); f.back == nil { // the half-open SASL exchange could not be cancelled
		if err := f.open(); err != nil {
			return errTryLater
		}
	}
	c := f.back.c
	if f.inTx {
		if err := c.Reset(); err != nil {
			return err
		}
		f.inTx = false
	}
	if opts != nil && opts.Body == gosmtp.Body8BitMIME {
		if ok, _ := c.Extension("8BITMIME"); !ok {
			return errNo8BitMIME
		}
	}
	writes := f.back.rc.writes
	err := c.Mail(from, opts)
	return f.back.unsent(writes, err)
}

// Rcpt implements gosmtp.Session.
func (f *front) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !validWord(to) {
		return errBadRcpt
	}
	if f.back == nil || !f.inTx {
		return errBackendLost
	}
	writes := f.back.rc.writes
	err := f.back.c.Rcpt(to, opts)
	if err = f.back.unsent(writes, err); err != nil {
		if se, ok := refusal(err); ok {
			return se
		}
		return f.backendReply(err, "RCPT")
	}
	f.rcpts++
	return nil
}

// Reset implements gosmtp.Session: RSET, and go-smtp's own resets (after
// each message, at a new EHLO) when a backend transaction is open.
func (f *front) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.back == nil || !f.inTx {
		return
	}
	if err := f.back.c.Reset(); err != nil {
		f.drop(fmt.Errorf("RSET: %w", err))
		return
	}
	f.inTx = false
}

// Logout implements gosmtp.Session. go-smtp calls it when the connection
// closes and after STARTTLS, which must forget an earlier AUTH (RFC 3207
// §4.2): a backend logged in with those credentials is let go. During a BDAT
// Data (STARTTLS in the middle of a transfer) it cannot wait for the lock:
// Data does the work when it ends.
func (f *front) Logout() error {
	if !f.mu.TryLock() {
		f.logoutPending.Store(true)
		return nil
	}
	defer f.mu.Unlock()
	f.logout()
	return nil
}

func (f *front) logout() {
	f.creds = nil
	if f.back != nil && f.back.authed {
		f.back.quit()
		f.back, f.inTx = nil, false
	}
}
