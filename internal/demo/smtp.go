package demo

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// SMTPOptions configure a fake SMTP backend.
type SMTPOptions struct {
	TLS         *tls.Config       // enables STARTTLS; not together with XCLIENT
	Users       map[string]string // AUTH PLAIN accounts (name -> password); nil offers no AUTH
	Masters     map[string]string // master users (name -> password) who may AUTH PLAIN as any of Users, named as authzid
	RequireAuth bool              // MAIL without AUTH gets 530 5.7.0
	XCLIENT     bool              // announce XCLIENT and record what it says
	MaxSize     int64             // the SIZE announced and enforced; 0 = none
	// Deliver, when set, is called with every accepted message (the demo
	// puts it into the IMAP and POP3 mailboxes of its recipients).
	Deliver func(SMTPMessage)
}

// SMTPMessage is one message an SMTP backend accepted, exactly as received.
type SMTPMessage struct {
	Helo     string
	User     string            // AUTH identity, if any
	TLS      bool              // the connection was TLS
	XClient  map[string]string // XCLIENT attributes in force, decoded
	From     string
	MailOpts gosmtp.MailOptions
	Rcpts    []SMTPRcpt
	Data     []byte
}

// SMTPRcpt is one accepted recipient.
type SMTPRcpt struct {
	To   string
	Opts gosmtp.RcptOptions
}

// SMTPServer is a fake SMTP backend on go-smtp's server. It records each
// message it accepts, and can be told to reject a recipient, reject DATA,
// or drop the connection in the middle of DATA. It answers the final dot
// with "250 2.0.0 <name>: queued as <n>".
type SMTPServer struct {
	Name string

	o   SMTPOptions
	srv *gosmtp.Server

	mu         sync.Mutex
	rejectRcpt map[string]*gosmtp.SMTPError
	rejectData *gosmtp.SMTPError
	dropInData bool
	messages   []SMTPMessage
	xclients   []map[string]string
	sessions   map[*gosmtp.Conn]struct{}
}

// NewSMTPServer makes a fake SMTP backend called name.
func NewSMTPServer(name string, o SMTPOptions) *SMTPServer {
	s := &SMTPServer{Name: name, o: o, rejectRcpt: map[string]*gosmtp.SMTPError{}, sessions: map[*gosmtp.Conn]struct{}{}}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(s.newSession))
	srv.Domain = name
	srv.TLSConfig = o.TLS
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = o.MaxSize
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = discardLogger{}
	s.srv = srv
	return s
}

// Serve serves SMTP on ln until Close.
func (s *SMTPServer) Serve(ln net.Listener) error {
	if s.o.XCLIENT {
		ln = xclientListener{ln, s}
	}
	return s.srv.Serve(ln)
}

// Close stops the server and closes its connections.
func (s *SMTPServer) Close() error { return s.srv.Close() }

// RejectRcpt makes RCPT TO:<addr> fail with err; nil accepts it again.
func (s *SMTPServer) RejectRcpt(addr string, err *gosmtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.rejectRcpt, addr)
		return
	}
	s.rejectRcpt[addr] = err
}

// RejectData makes every message fail at the final dot with err; nil
// accepts again.
func (s *SMTPServer) RejectData(err *gosmtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectData = err
}

// DropInData makes the server close the connection in the middle of the
// next messages' DATA.
func (s *SMTPServer) DropInData(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropInData = on
}

// Messages returns the messages accepted so far.
func (s *SMTPServer) Messages() []SMTPMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SMTPMessage(nil), s.messages...)
}

// XClients returns the attributes of every XCLIENT command received.
func (s *SMTPServer) XClients() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]string(nil), s.xclients...)
}

// Sessions counts the connections that said EHLO or HELO (so not the
// health checks, which only read the greeting).
func (s *SMTPServer) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *SMTPServer) newSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	s.mu.Lock()
	s.sessions[c] = struct{}{} // the same *Conn after STARTTLS
	s.mu.Unlock()
	return &smtpSession{srv: s, conn: c}, nil
}

// smtpSession is one fake SMTP session.
type smtpSession struct {
	srv  *SMTPServer
	conn *gosmtp.Conn
	user string
	msg  *SMTPMessage
}

func (ss *smtpSession) AuthMechanisms() []string {
	if ss.srv.o.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *smtpSession) Auth(mech string) (sasl.Server, error) {
	if ss.srv.o.Users == nil || mech != sasl.Plain {
		return nil, gosmtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		failed := &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8},
			Message: fmt.Sprintf("%s: authentication failed for %s", ss.srv.Name, username)}
		if identity != "" && identity != username {
			_, exists := ss.srv.o.Users[identity]
			if pw, ok := ss.srv.o.Masters[username]; !ok || pw != password || !exists {
				return failed
			}
			ss.user = identity
			return nil
		}
		if pw, ok := ss.srv.o.Users[username]; !ok || pw != password {
			return failed
		}
		ss.user = username
		return nil
	}), nil
}

func (ss *smtpSession) Mail(from string, opts *gosmtp.MailOptions) error {
	if ss.srv.o.RequireAuth && ss.user == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: ss.srv.Name + ": authentication required"}
	}
	_, isTLS := ss.conn.TLSConnectionState()
	ss.msg = &SMTPMessage{Helo: ss.conn.Hostname(), User: ss.user, TLS: isTLS, From: from, MailOpts: *opts}
	if xc, ok := ss.conn.Conn().(*xconn); ok {
		ss.msg.XClient = xc.attributes()
	}
	return nil
}

func (ss *smtpSession) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	ss.srv.mu.Lock()
	err := ss.srv.rejectRcpt[to]
	ss.srv.mu.Unlock()
	if err != nil {
		return err
	}
	ss.msg.Rcpts = append(ss.msg.Rcpts, SMTPRcpt{To: to, Opts: *opts})
	return nil
}

func (ss *smtpSession) Data(r io.Reader) error {
	s := ss.srv
	s.mu.Lock()
	drop, reject := s.dropInData, s.rejectData
	s.mu.Unlock()
	if drop {
		io.ReadFull(r, make([]byte, 1))
		ss.conn.Conn().Close()
		return &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "dropped"}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if reject != nil {
		return reject
	}
	ss.msg.Data = data
	s.mu.Lock()
	s.messages = append(s.messages, *ss.msg)
	n := len(s.messages)
	s.mu.Unlock()
	if s.o.Deliver != nil {
		s.o.Deliver(*ss.msg)
	}
	return &gosmtp.SMTPError{Code: 250, EnhancedCode: gosmtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("%s: queued as %d", s.Name, n)}
}

func (ss *smtpSession) Reset()        { ss.msg = nil }
func (ss *smtpSession) Logout() error { return nil }

// xclientListener gives go-smtp's server connections with XCLIENT added.
type xclientListener struct {
	net.Listener
	srv *SMTPServer
}

func (l xclientListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &xconn{Conn: c, r: bufio.NewReader(c), srv: l.srv}, nil
}

// xconn is a thin raw-protocol layer in front of go-smtp's server, which has
// no XCLIENT: it adds XCLIENT to EHLO replies and answers XCLIENT itself
// (recording the attributes, answering with a fresh 220 greeting), so that
// go-smtp never sees it. It follows DATA so that message lines are never
// taken for commands. go-smtp calls Read and Write from one goroutine.
type xconn struct {
	net.Conn
	r       *bufio.Reader
	srv     *SMTPServer
	pending []byte
	inData  bool

	mu    sync.Mutex
	attrs map[string]string
}

func (c *xconn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			if len(line) == 0 {
				return 0, err
			}
			c.pending = line
			break
		}
		verb, _, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
		switch {
		case c.inData:
			c.inData = string(line) != ".\r\n"
		case strings.EqualFold(verb, "XCLIENT"):
			if err := c.xclient(string(line)); err != nil {
				return 0, err
			}
			continue
		case strings.EqualFold(verb, "DATA"):
			c.inData = true
		}
		c.pending = line
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *xconn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err == nil && bytes.HasPrefix(p, []byte("250-Hello ")) {
		_, err = io.WriteString(c.Conn, "250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n")
	}
	return n, err
}

// xclient records the attributes of one XCLIENT command and greets anew.
func (c *xconn) xclient(line string) error {
	got := map[string]string{}
	for _, kv := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(kv, "=")
		dv, err := decodeXtext(v)
		if !ok || err != nil {
			_, err := io.WriteString(c.Conn, "501 5.5.4 Bad XCLIENT attribute\r\n")
			return err
		}
		got[strings.ToUpper(k)] = dv
	}
	c.mu.Lock()
	if c.attrs == nil {
		c.attrs = map[string]string{}
	}
	for k, v := range got {
		c.attrs[k] = v
	}
	c.mu.Unlock()
	c.srv.mu.Lock()
	c.srv.xclients = append(c.srv.xclients, got)
	c.srv.mu.Unlock()
	_, err := fmt.Fprintf(c.Conn, "220 %s ESMTP fake, XCLIENT accepted\r\n", c.srv.Name)
	return err
}

func (c *xconn) attributes() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.attrs))
	for k, v := range c.attrs {
		out[k] = v
	}
	return out
}

// decodeXtext undoes RFC 3461 xtext ("+HH" for a byte).
func decodeXtext(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("truncated xtext %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", err
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}
