// Package lmtp is mailproxy's LMTP (RFC 2033): the client dialogue with
// go-smtp's server in LMTP mode (LHLO, PIPELINING (RFC 2920), 8BITMIME
// (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034 and 3463), CHUNKING (RFC 3030),
// STARTTLS (RFC 3207)), the backend dialogue with go-smtp's LMTP client,
// and the health probe.
//
// LMTP has no login and no relay phase: a delivery session carries mail
// for many users, and each recipient goes to its own user's backend.
// Serve asks Session.Route for every recipient (the proxy places it as an
// IMAP login of that user would be placed and holds it there) and mirrors
// the transaction to each backend that got a recipient: one backend
// transaction per backend, with only that backend's recipients. After the
// message the client gets one reply per recipient, in RCPT order, each the
// backend's own; a backend that fails gives 4xx for its recipients only,
// and no recipient is ever acknowledged that its backend did not accept.
// Nothing is queued here.
package lmtp

import (
	"context"
	"fmt"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
	"mailproxy/protocols/smtp"
)

// Timeouts of RFC 5321 §4.5.3.2, which LMTP keeps. The proxy's login
// deadline does not fit LMTP, whose whole session happens before what the
// proxy calls login, so Serve replaces it with these.
const (
	commandTimeout = 5 * time.Minute  // waiting for the client's next command or data block
	writeTimeout   = time.Minute      // one reply to the client
	backendTimeout = 5 * time.Minute  // one command to a backend, or one block of the message
	quitTimeout    = 5 * time.Second  // saying goodbye to a backend
	dataEndTimeout = 10 * time.Minute // a backend's replies to the final dot (delivery, Sieve)
)

// maxRecipients bounds one transaction: each recipient holds a lease.
const maxRecipients = 1000

// Handler is the LMTP protocols.Handler. The zero value is ready to use.
type Handler struct{}

var _ protocols.Handler = Handler{}

// Serve implements protocols.Handler. It runs go-smtp's server in LMTP
// mode on the one client connection until the client quits or disconnects
// or ctx ends, and always returns a nil Relay. s.Route must be set.
//
// Serve returns only after go-smtp's connection goroutine has ended and
// every backend is closed.
func (Handler) Serve(ctx context.Context, s *protocols.Session) (*protocols.Relay, error) {
	if s.Route == nil {
		return nil, fmt.Errorf("lmtp: session has no Route")
	}
	fc := newFrontConn(s.Conn, commandTimeout, writeTimeout)
	f := newFront(ctx, s)
	srv := newServer(f, s)
	smtp.ServeConn(ctx, srv, fc, fc.closed)
	f.close()
	s.BytesIn, s.BytesOut = fc.in.Load(), fc.out.Load()
	return nil, nil
}

func newServer(f *front, s *protocols.Session) *gosmtp.Server {
	srv := gosmtp.NewServer(f)
	srv.LMTP = true
	srv.Domain = s.Hostname
	srv.MaxRecipients = maxRecipients
	srv.ErrorLog = smtp.ErrorLog{Log: s.Log, Name: "lmtp"}
	if s.TLSActive {
		srv.AllowInsecureAuth = true // go-smtp cannot see the TLS under the wrapper
	} else {
		srv.TLSConfig = s.TLS
	}
	return srv
}
