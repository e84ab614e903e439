// Package smtp is mailproxy's SMTP, submission and SMTPS: the client
// dialogue (RFC 5321) with go-smtp's server — PIPELINING (RFC 2920),
// 8BITMIME (RFC 6152), SIZE (RFC 1870), ENHANCEDSTATUSCODES (RFC 2034 and
// 3463), STARTTLS (RFC 3207), AUTH PLAIN and LOGIN (RFC 4954, 4616), AUTH
// OAUTHBEARER (RFC 7628) and XOAUTH2 passed through to the backend,
// CHUNKING (RFC 3030), DSN parameters (RFC 3461), SMTPUTF8 (RFC 6531) — the
// backend dialogue with go-smtp's client (greeting, EHLO, STARTTLS, Postfix's
// XCLIENT, AUTH), and the health probe.
//
// SMTP has no relay phase: Serve mirrors every transaction synchronously.
// MAIL, RCPT, DATA/BDAT and RSET go to the backend one by one and the client
// gets the backend's own reply, so a message is acknowledged only after the
// backend acknowledged it, and nothing is ever queued or bounced here.
package smtp

import (
	"context"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// Timeouts of RFC 5321 §4.5.3.2. SMTP's whole session happens before what
// the proxy calls login, so Serve replaces the proxy's deadline with these
// per-read and per-write deadlines, and keeps the login deadline
// (Session.LoginDeadline, login_timeout from accept) only until the client
// authenticates or a backend accepts its first MAIL: a client that does
// neither, however slowly it trickles, is closed then.
const (
	commandTimeout = 5 * time.Minute  // §4.5.3.2.7: waiting for the client's next command or data block
	writeTimeout   = time.Minute      // one reply to the client
	backendTimeout = 5 * time.Minute  // one command to the backend
	quitTimeout    = 5 * time.Second  // saying goodbye to the backend
	dataEndTimeout = 10 * time.Minute // §4.5.3.2.6: the backend's reply to the final dot
)

// Handler is the SMTP protocols.Handler. The zero value is ready to use.
type Handler struct{}

var _ protocols.Handler = Handler{}

// Serve implements protocols.Handler. It runs go-smtp's server on the one
// client connection until the client quits or disconnects or ctx ends, and
// always returns a nil Relay.
//
// Serve returns only after go-smtp's connection goroutine has ended and the
// backend is closed: nothing outlives the session.
func (Handler) Serve(ctx context.Context, s *protocols.Session) (*protocols.Relay, error) {
	fc := newFrontConn(s.Conn, commandTimeout, writeTimeout, s.LoginDeadline)
	f := newFront(ctx, s, fc)
	srv := f.newServer()
	ServeConn(ctx, srv, fc, fc.closed)
	f.close()
	s.BytesIn, s.BytesOut = fc.in.Load(), fc.out.Load()
	return nil, f.err
}

// newServer configures go-smtp's server for this one connection. It is
// per connection because NewSession adjusts SIZE, SMTPUTF8 and DSN to what
// the chosen backend announces.
func (f *front) newServer() *gosmtp.Server {
	s := f.s
	srv := gosmtp.NewServer(f)
	srv.Domain = s.Hostname
	srv.MaxMessageBytes = s.MaxSize
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = ErrorLog{Log: s.Log, Name: "smtp"}
	f.srv = srv
	if s.TLSActive {
		// go-smtp recognises TLS by a *tls.Conn, which the wrapper hides:
		// no STARTTLS on top, and AUTH is allowed.
		srv.AllowInsecureAuth = true
	} else {
		srv.TLSConfig = s.TLS
		srv.AllowInsecureAuth = !s.RequireTLS
	}
	return srv
}
