package lmtp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// The replies mailproxy makes itself. Everything else the client hears
// about a recipient is its backend's own reply.
var (
	errTryLater    = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Mailbox server not available, try again later"}
	errBackendLost = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Connection to the mailbox server lost, message not delivered, try again later"}
	errAborted     = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Message transfer aborted"}
	errNoMail      = &gosmtp.SMTPError{Code: 503, EnhancedCode: gosmtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	errLineTooLong = &gosmtp.SMTPError{Code: 500, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
)

// front is one client connection's LMTP session. go-smtp's server calls it
// (it is the gosmtp.Backend, Session and LMTPSession) and it mirrors the
// open transaction to one backend transaction per backend its recipients
// are on.
//
// mu serialises everything that talks to a backend. go-smtp calls the
// session from the connection's goroutine, except LMTPData after BDAT,
// which runs on a goroutine of its own; go-smtp makes it return before it
// calls Reset or Logout.
type front struct {
	ctx    context.Context // ends the session; cancel closes every backend
	cancel context.CancelFunc
	s      *protocols.Session

	mu    sync.Mutex
	helo  string
	from  *string // nil: no MAIL yet
	opts  gosmtp.MailOptions
	txs   []*tx          // the open message's backend transactions, in the order opened
	rcpts []*recipient   // accepted recipients, in RCPT order
	byB   map[string]*tx // txs by backend name
}

// recipient is one accepted RCPT: the address as the client gave it, and
// the lease that holds its user.
type recipient struct {
	to    string
	lease *protocols.Lease
}

func newFront(ctx context.Context, s *protocols.Session) *front {
	ctx, cancel := context.WithCancel(ctx)
	return &front{ctx: ctx, cancel: cancel, s: s, byB: map[string]*tx{}}
}

// NewSession implements gosmtp.Backend; go-smtp calls it at LHLO (and again
// after STARTTLS). No backend is contacted before the first recipient.
func (f *front) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.helo = c.Hostname()
	return f, nil
}

// Mail implements gosmtp.Session. The backends see MAIL when they get
// their first recipient.
func (f *front) Mail(from string, opts *gosmtp.MailOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endTx()
	f.from = &from
	f.opts = gosmtp.MailOptions{}
	if opts != nil {
		f.opts = *opts
	}
	return nil
}

// Rcpt implements gosmtp.Session: route the recipient's user, hold it,
// and give the recipient to its backend's transaction, opened on the first
// recipient for that backend. The client gets that backend's reply.
func (f *front) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.from == nil {
		return errNoMail
	}
	lease, err := f.s.Route(f.ctx, to)
	if err != nil {
		f.s.Log.Warn("recipient not routed", "rcpt", to, "err", err)
		return errTryLater
	}
	t := f.byB[lease.Backend]
	if t == nil {
		t = f.openTx(lease)
	}
	if err := t.rcpt(to, opts); err != nil {
		lease.Release()
		return f.txReply(t, err, "RCPT")
	}
	f.rcpts = append(f.rcpts, &recipient{to: to, lease: lease})
	return nil
}

// openTx connects the lease's backend and sends it MAIL. A backend that
// fails is kept as a failed transaction, so its later recipients fail at
// once too. The caller holds mu.
func (f *front) openTx(lease *protocols.Lease) *tx {
	t := &tx{backend: lease.Backend}
	f.txs = append(f.txs, t)
	f.byB[lease.Backend] = t
	err := t.open(f.ctx, lease, f.helo, f.s)
	if err == nil {
		err = t.c.Mail(*f.from, &f.opts)
	}
	if err != nil {
		t.fail(err)
		f.s.Log.Warn("backend transaction failed", "backend", t.backend, "during", "MAIL", "err", err)
	}
	return t
}

// txReply is the client's reply for a recipient t did not take: the
// backend's own refusal (of RCPT, or of MAIL before it), or 451 when the
// backend could not be reached or broke, which also ends t. The caller
// holds mu.
func (f *front) txReply(t *tx, err error, during string) error {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) && se.Code != 421 {
		return se
	}
	if t.err == nil {
		t.fail(fmt.Errorf("%s: %w", during, err))
		f.s.Log.Warn("backend transaction failed", "backend", t.backend, "during", during, "err", err)
	}
	return errBackendLost
}

// Reset implements gosmtp.Session: RSET, and go-smtp's own reset after
// each message.
func (f *front) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endTx()
}

// Logout implements gosmtp.Session; go-smtp calls it when the connection
// closes and after STARTTLS.
func (f *front) Logout() error {
	f.Reset()
	return nil
}

// endTx ends the open transaction: every backend gets QUIT and every held
// user is released. Connections are not kept between messages: a
// transaction's lease is what makes its connection the right one. The
// caller holds mu.
func (f *front) endTx() {
	for _, t := range f.txs {
		t.quit()
	}
	for _, r := range f.rcpts {
		r.lease.Release()
	}
	f.txs, f.rcpts, f.from = nil, nil, nil
	clear(f.byB)
}

// close ends the session's use of its backends, after go-smtp is done.
func (f *front) close() {
	f.cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endTx()
}
