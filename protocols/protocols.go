// Package protocols is the contract between the proxy and the protocol
// packages (imap, pop3, smtp, lmtp, managesieve): what the proxy hands a
// protocol for one client connection, and what the protocol hands back
// after login.
//
// A protocol package speaks its protocol on both sides (the client dialogue
// before login, and the backend's greeting, STARTTLS and login) but never
// accepts connections or picks backends: it asks Session.Dial for a backend.
//
// The helpers the protocols share live here too: line reading, the SASL
// servers of PLAIN and LOGIN, the parser of the passthrough mechanisms
// (ParseOAuth: OAUTHBEARER, RFC 7628, and XOAUTH2), and the login checks
// every protocol makes (LoginAllowed, FailDelay, LoginSucceeded).
package protocols

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	mtls "mailproxy/tls"
)

// Password is a secret that redacts itself wherever it is printed or logged.
// Use string(p) only where the password goes on the wire.
type Password string

// String implements fmt.Stringer and prints a placeholder.
func (Password) String() string { return "REDACTED" }

// GoString implements fmt.GoStringer.
func (Password) GoString() string { return "REDACTED" }

// LogValue implements slog.LogValuer.
func (Password) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// MarshalText keeps the password out of JSON and other encodings.
func (Password) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// Credentials are what a client logged in with.
type Credentials struct {
	Username string
	Password Password
	Authzid  string // SASL authorisation identity; empty when the same as Username

	// Mech is set for a passthrough login (OAUTHBEARER, XOAUTH2): then
	// Message, the client's SASL message with the token, goes to the
	// backend unchanged and Password is empty. "" for a password login.
	Mech    string
	Message Password

	// Backend, set by Session.Authenticate, is the backend the login must
	// go to (auth_http's Auth-Server): a protocol that picked one before
	// the login (SMTP) dials again. "" = routing decides.
	Backend string
}

// Session is what the proxy gives a protocol for one client connection.
// It is owned by the session's goroutine.
type Session struct {
	ID   string
	Conn net.Conn // the client connection; already TLS on an implicit-TLS listener, replaced by the protocol after STARTTLS
	Log  *slog.Logger

	TLS        *tls.Config // server config for STARTTLS; nil when the listener has tls = none
	TLSActive  bool        // TLS is already up (implicit TLS listener)
	RequireTLS bool        // no login before TLS
	Hostname   string      // our name in SMTP's greeting and EHLO reply

	// Listener extensions (see the config contract).
	SMTPAuth string // off | optional | required
	APOP     bool
	MaxSize  int64

	MaxLine          int           // longest line or literal accepted before login
	AuthFailureDelay time.Duration // waited before every failed-login reply
	// LoginDeadline is when the client must have logged in (login_timeout
	// from accept), already set on Conn; zero: no bound. A protocol that
	// replaces Conn's deadlines (SMTP) keeps this one until login.
	LoginDeadline time.Time
	// BackendTimeout bounds a backend login where the protocol logs in
	// after Dial's deadline is gone (SMTP's AUTH); 0: the protocol's own.
	BackendTimeout time.Duration

	// Dial picks a backend for the routing key derived from login (empty:
	// not tied to a user), connects (implicit TLS done), and calls hello,
	// which reads the greeting, does STARTTLS and may log in (IMAP, POP3).
	// A backend that cannot be reached or fails hello counts as a failed
	// health check and the next one is tried where the routing rules
	// allow, unless hello's error is
	// the client's (errors.Is(err, ErrClientFault)): then Dial returns it
	// at once and charges no one.
	Dial func(ctx context.Context, login string, hello func(context.Context, *Backend) error) (*Backend, error)

	// Authenticate, when not nil, checks a client's credentials before any
	// backend is contacted for its login, and returns the credentials to
	// log in to the backend with: the client's own, or a master user's
	// with the client's name as Authzid, or the ones an auth_http service
	// named. An error is a failed login: the protocol logs it and gives
	// its usual failed-login reply after FailDelay; except
	// ErrAuthUnavailable, a temporary failure with no delay. Dial still
	// gets the client's user name, which routes. nil (passthrough): the
	// backend checks the client's credentials.
	Authenticate func(ctx context.Context, c Credentials) (Credentials, error)

	// Route, on listeners of a protocol that routes each recipient on
	// its own (LMTP), places user as an IMAP login of user would be placed
	// and holds the user there until the returned Lease is released. The
	// protocol never picks a backend itself: it asks Route for every user.
	// Nil on other listeners.
	Route func(ctx context.Context, user string) (*Lease, error)

	// User is the login name of the last login attempt, for the session log.
	User string
	// BytesIn and BytesOut are what the client sent and was sent, filled
	// in by a protocol with no relay phase (SMTP) for the session log.
	BytesIn, BytesOut int64
	// LoggedIn is set by LoginSucceeded; the proxy counts an SMTP login,
	// which has no relay phase, by it.
	LoggedIn bool

	// PassMechs, when not nil, lists the passthrough mechanisms
	// (PassthroughMechs) that every backend of the listener's pool
	// announced when last asked; a protocol whose backend is picked only
	// at login offers just these. nil or empty: none.
	PassMechs func() []string

	// Guard, when not nil, is the brute-force protection of the client's
	// address (see LoginGuard); nil: only AuthFailureDelay applies.
	Guard LoginGuard
}

// FailDelay records a failed login of s.User with the Guard and waits
// its penalty, or without a Guard the auth failure delay, or until ctx
// ends. Every failed-login reply comes after it.
func (s *Session) FailDelay(ctx context.Context) {
	if s.Guard != nil {
		s.Guard.Failed(ctx, s.User)
		return
	}
	if s.AuthFailureDelay <= 0 {
		return
	}
	t := time.NewTimer(s.AuthFailureDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// BackendCredentials runs Authenticate, when set, on a client's
// credentials and returns the ones to log in to the backend with; without
// it, c itself. A refusal is logged here, so each protocol only answers it.
func (s *Session) BackendCredentials(ctx context.Context, c Credentials) (Credentials, error) {
	if s.Authenticate == nil {
		return c, nil
	}
	back, err := s.Authenticate(ctx, c)
	if err != nil {
		s.Log.Info("login failed: refused by mailproxy", "user", c.Username, "err", err)
		return Credentials{}, err
	}
	return back, nil
}

// Backend is a connection to one backend server, from Session.Dial.
type Backend struct {
	net.Conn
	Name          string
	Addr          string
	TLS           *tls.Config // client config for STARTTLS towards it
	StartTLS      bool        // the backend's tls = starttls
	ForwardClient bool        // forward the client's identity (ID, XCLIENT)
	Reader        *bufio.Reader
	Greeting      string   // the backend's greeting line, set by the protocol's hello
	Caps          []string // what the backend announced, as the protocol reads it

	// Fail reports that the backend misbehaved (health: one failed check).
	// Only for the backend's own faults; never for what the client caused
	// (see ErrClientFault).
	Fail func(reason string)

	release   func()
	closeOnce sync.Once
}

// NewBackend wraps a dialled connection; release runs once on Close.
func NewBackend(c net.Conn, name, addr string, release func()) *Backend {
	return &Backend{Conn: c, Name: name, Addr: addr, release: release, Reader: NewReader(c), Fail: func(string) {}}
}

// TakeBuffered ends the use of the backend's reader after a login that
// hands the connection to the relay: it returns a copy of what the reader
// holds unread (Relay.BackBuf) and recycles the reader (PutReader), which
// must not be used again.
func (b *Backend) TakeBuffered() []byte {
	buf := Buffered(b.Reader)
	PutReader(b.Reader)
	b.Reader = nil
	return buf
}

// readerSize is the buffer of the line readers of the login phase.
const readerSize = 4096

// readers recycles the line readers of the login phase. Each login used
// to allocate two (client and backend side): 8 KiB of the 13 KB a plain
// IMAP login allocated, for a dialogue of a few hundred bytes. A reader
// goes back only from where its owner is done with it (the end of a
// protocol's Serve, TakeBuffered), so the pool holds no session's state.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readerSize) }}

// NewReader returns a line reader of r from the pool.
func NewReader(r io.Reader) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// PutReader gives a reader from NewReader back to the pool; the caller
// must not use it (nor any slice it returned by ReadSlice or Peek) again.
func PutReader(br *bufio.Reader) {
	if br == nil || br.Size() != readerSize {
		return
	}
	br.Reset(nil)
	readers.Put(br)
}

// Close closes the connection and releases the backend's lease.
func (b *Backend) Close() error {
	var err error
	b.closeOnce.Do(func() {
		err = b.Conn.Close()
		if b.release != nil {
			b.release()
		}
	})
	return err
}

// UpgradeTLS is the end of a STARTTLS towards the backend, once it has
// said go ahead: the handshake under ctx, then a fresh reader and no
// capabilities, so that nothing the backend sent before the upgrade is
// read or trusted afterwards (STYLE.md 8).
func (b *Backend) UpgradeTLS(ctx context.Context) error {
	tc, err := mtls.Handshake(ctx, b.Conn, b.TLS, false)
	if err != nil {
		return err
	}
	b.SetConn(tc)
	b.Caps = nil // they change with TLS and must be asked again
	return nil
}

// SetConn replaces the connection after STARTTLS and starts a fresh reader,
// so nothing buffered before the upgrade is ever read.
func (b *Backend) SetConn(c net.Conn) {
	b.Conn = c
	b.Reader = NewReader(c)
}

// Relay is what a protocol returns after a successful login: the two
// connections to copy between, and bytes each side already sent that the
// protocol read ahead and the other side has not seen yet.
type Relay struct {
	Client    net.Conn
	ClientBuf []byte // from the client, for the backend
	Backend   *Backend
	BackBuf   []byte // from the backend, for the client
}

// Handler runs one protocol's dialogue for a client connection.
type Handler interface {
	// Serve runs the dialogue before login. It returns a Relay after a
	// successful login, nil and nil when the client left politely, or an
	// error. A protocol with no relay phase (SMTP) does all its work here.
	Serve(ctx context.Context, s *Session) (*Relay, error)
	// Probe checks a backend for the health checker: read the greeting,
	// end politely.
	Probe(ctx context.Context, conn net.Conn) error
	// Notice is the protocol's line (CRLF included) for what the proxy
	// itself must tell a client before it closes the connection.
	Notice(n Notice) string
}

// ErrClientFault marks a failure the client caused: a name, address or
// argument the client sent that mailproxy or the backend refused. It is
// answered to that client and never counts against a backend's health nor
// sends the session to the next backend (DESIGN.md, "What bad input
// gets"). Test with errors.Is; wrap with ClientFault.
var ErrClientFault = errors.New("refused because of what the client sent")

// ClientFault wraps err as the client's fault: errors.Is(e,
// ErrClientFault) holds, errors.As still finds err's own types, and the
// text is err's.
func ClientFault(err error) error { return clientFault{err} }

type clientFault struct{ err error }

func (e clientFault) Error() string   { return e.err.Error() }
func (e clientFault) Unwrap() []error { return []error{e.err, ErrClientFault} }

// ErrLineTooLong is returned by ReadLine for a line over the limit.
var ErrLineTooLong = errors.New("line too long")

// ReadLine reads one CRLF- or LF-terminated line of at most max bytes
// (without the terminator) and returns it without the line ending. A
// longer line is read to its end and dropped, and ReadLine returns its
// first max bytes (so that an IMAP reply can still carry the tag) with
// ErrLineTooLong.
func ReadLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			line = append(line, frag[:min(len(frag), max-min(len(line), max))]...)
			// Swallow the rest of the line so the next read starts clean.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return nil, err
			}
			return line[:min(len(line), max)], ErrLineTooLong
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// Buffered returns a copy of what r holds unread.
func Buffered(r *bufio.Reader) []byte {
	n := r.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := r.Peek(n)
	return append([]byte(nil), b...)
}

// Probe is the health check every protocol shares: read the greeting off
// conn with greet (which says whether it is a good one), then say bye and
// read the answer with farewell, so that the backend logs a client that
// left politely, not a lost one. The caller sets the deadline and closes
// conn.
func Probe(conn net.Conn, greet func(r *bufio.Reader) error, bye string, farewell func(r *bufio.Reader)) error {
	r := bufio.NewReaderSize(conn, 1024)
	if err := greet(r); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, bye); err == nil {
		farewell(r) // whatever it says: it greeted, which is the check
	}
	return nil
}
