package demo

import (
	"bufio"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// POP3Server is an in-memory POP3 backend (RFC 1939 with CAPA (RFC 2449),
// STLS (RFC 2595), AUTH PLAIN (RFC 5034), APOP and Dovecot's XCLIENT). Each
// user has one maildrop of its own, not shared with IMAPServer, and a
// second session of a user gets -ERR [IN-USE] while the first lasts. Make
// one with NewPOP3Server and set the exported fields before Serve.
type POP3Server struct {
	Name      string
	Tracker   *Tracker    // optional: logins are reported as IMAPServer's are
	TLSConfig *tls.Config // enables STLS when not nil
	SASL      bool        // CAPA lists SASL PLAIN and AUTH PLAIN works; NewPOP3Server sets it
	XCLIENT   bool        // the greeting carries [XCLIENT] and XCLIENT is accepted, as Dovecot does for trusted networks
	// Masters are master users (name -> password) who may log in as any
	// user with AUTH PLAIN, that user as the authorisation identity, as
	// Dovecot's master users do. Set before Serve.
	Masters map[string]string

	// RejectLogins makes every login fail with "-ERR [SYS/PERM] ...", even
	// with the right password.
	RejectLogins atomic.Bool

	mu        sync.Mutex
	boxes     map[string]*maildrop
	inUse     map[string]bool
	logins    int
	forwarded []string
	nextUID   int
	stamps    int
	lns       map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

type maildrop struct {
	password string
	msgs     []pop3Message
}

type pop3Message struct {
	uid  string
	data string // CRLF line endings
}

// NewPOP3Server makes a backend called name with users (name -> password),
// each with an empty maildrop. tlsConfig enables STLS when not nil.
func NewPOP3Server(name string, users map[string]string, tlsConfig *tls.Config) *POP3Server {
	s := &POP3Server{Name: name, TLSConfig: tlsConfig, SASL: true,
		boxes: make(map[string]*maildrop), inUse: make(map[string]bool),
		lns: make(map[net.Listener]struct{}), conns: make(map[net.Conn]struct{})}
	for u, pw := range users {
		s.AddUser(u, pw)
	}
	return s
}

// AddUser adds a user with an empty maildrop, or sets an existing user's
// password.
func (s *POP3Server) AddUser(name, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boxes[name]; b != nil {
		b.password = password
		return
	}
	s.boxes[name] = &maildrop{password: password}
}

// Add appends a message (any line endings) to user's maildrop. A user not
// added yet gets a maildrop that no password opens.
func (s *POP3Server) Add(user, msg string) {
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	if msg != "" && !strings.HasSuffix(msg, "\r\n") {
		msg += "\r\n"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boxes[user]
	if b == nil {
		b = &maildrop{password: "\x00"}
		s.boxes[user] = b
	}
	s.nextUID++
	b.msgs = append(b.msgs, pop3Message{uid: fmt.Sprintf("%s-%08d", s.Name, s.nextUID), data: msg})
}

// Messages returns user's messages as stored (CRLF line endings).
func (s *POP3Server) Messages(user string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if b := s.boxes[user]; b != nil {
		for _, m := range b.msgs {
			out = append(out, m.data)
		}
	}
	return out
}

// Logins returns how many logins succeeded so far.
func (s *POP3Server) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// Forwarded returns the ADDR of every XCLIENT command received, in order.
func (s *POP3Server) Forwarded() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.forwarded...)
}

// Serve serves POP3 on ln until Close. It returns nil after Close.
func (s *POP3Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.lns, ln)
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

func (s *POP3Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *POP3Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops every Serve, closes the connections and waits for them.
func (s *POP3Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// pop3Conn is one client of the fake.
type pop3Conn struct {
	s       *POP3Server
	c       net.Conn
	r       *bufio.Reader
	tls     bool
	stamp   string // APOP timestamp of the greeting
	user    string // from USER
	box     *maildrop
	name    string // logged-in user
	deleted map[int]bool
}

func (s *POP3Server) serveConn(c net.Conn) {
	s.mu.Lock()
	s.stamps++
	stamp := fmt.Sprintf("<%d.%d@%s>", s.stamps, time.Now().UnixNano(), s.Name)
	s.mu.Unlock()
	p := &pop3Conn{s: s, c: c, r: bufio.NewReader(c), stamp: stamp, deleted: map[int]bool{}}
	_, p.tls = c.(*tls.Conn)
	defer p.logout(false)
	code := ""
	if s.XCLIENT {
		code = "[XCLIENT] "
	}
	p.reply("+OK %s%s ready. %s", code, s.Name, stamp)
	for {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := p.r.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb = strings.ToUpper(verb)
		var quit bool
		if p.box == nil {
			quit = p.authorization(verb, arg)
		} else {
			quit = p.transaction(verb, arg)
		}
		if quit {
			return
		}
	}
}

func (p *pop3Conn) reply(format string, args ...any) {
	p.c.SetWriteDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(p.c, format+"\r\n", args...)
}

// multi sends a multi-line response, dot-stuffed.
func (p *pop3Conn) multi(first string, lines []string) {
	var b strings.Builder
	b.WriteString(first + "\r\n")
	for _, l := range lines {
		if strings.HasPrefix(l, ".") {
			b.WriteString(".")
		}
		b.WriteString(l + "\r\n")
	}
	b.WriteString(".\r\n")
	p.c.SetWriteDeadline(time.Now().Add(time.Minute))
	io.WriteString(p.c, b.String())
}

func (p *pop3Conn) capa() {
	caps := []string{"CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"}
	if p.box == nil {
		if p.s.TLSConfig != nil && !p.tls {
			caps = append(caps, "STLS")
		}
		caps = append(caps, "USER")
		if p.s.SASL {
			caps = append(caps, "SASL PLAIN")
		}
	}
	p.multi("+OK", caps)
}

// authorization runs one command before login; true ends the connection.
func (p *pop3Conn) authorization(verb, arg string) bool {
	switch verb {
	case "CAPA":
		p.capa()
	case "QUIT":
		p.reply("+OK Logging out.")
		return true
	case "STLS":
		if p.s.TLSConfig == nil || p.tls {
			p.reply("-ERR STLS not available.")
			return false
		}
		p.reply("+OK Begin TLS negotiation now.")
		tc := tls.Server(p.c, p.s.TLSConfig)
		tc.SetDeadline(time.Now().Add(time.Minute))
		if err := tc.Handshake(); err != nil {
			return true
		}
		p.c, p.r, p.tls, p.user = tc, bufio.NewReader(tc), true, ""
	case "USER":
		p.user = arg
		p.reply("+OK")
	case "PASS":
		if p.user == "" {
			p.reply("-ERR No username given.")
			return false
		}
		user := p.user
		p.user = ""
		p.login(user, func(pw string) bool { return pw == arg })
	case "AUTH":
		p.auth(arg)
	case "APOP":
		user, digest, _ := strings.Cut(arg, " ")
		p.login(user, func(pw string) bool {
			sum := md5.Sum([]byte(p.stamp + pw))
			return hex.EncodeToString(sum[:]) == digest
		})
	case "XCLIENT":
		if !p.s.XCLIENT {
			p.reply("-ERR Unknown command.")
			return false
		}
		for _, f := range strings.Fields(arg) {
			if addr, ok := strings.CutPrefix(f, "ADDR="); ok {
				p.s.mu.Lock()
				p.s.forwarded = append(p.s.forwarded, addr)
				p.s.mu.Unlock()
			}
		}
		p.reply("+OK Updated")
	default:
		p.reply("-ERR Unknown command.")
	}
	return false
}

// auth is AUTH PLAIN with or without the initial response; AUTH alone
// lists the mechanisms. An authorisation identity other than the user
// needs a master user's password.
func (p *pop3Conn) auth(arg string) {
	mech, ir, hasIR := strings.Cut(arg, " ")
	switch {
	case mech == "" && p.s.SASL:
		p.multi("+OK", []string{"PLAIN"})
		return
	case !p.s.SASL || !strings.EqualFold(mech, "PLAIN"):
		p.reply("-ERR Unsupported authentication mechanism.")
		return
	}
	if !hasIR {
		p.reply("+ ")
		line, err := p.r.ReadString('\n')
		if err != nil {
			return
		}
		ir = strings.TrimRight(line, "\r\n")
	}
	if ir == "*" {
		p.reply("-ERR Authentication aborted by client.")
		return
	}
	raw, err := base64.StdEncoding.DecodeString(ir)
	parts := strings.Split(string(raw), "\x00")
	if err != nil || len(parts) != 3 {
		p.reply("-ERR [AUTH] Invalid authentication data.")
		return
	}
	if authzid := parts[0]; authzid != "" && authzid != parts[1] {
		if pw, ok := p.s.Masters[parts[1]]; !ok || pw != parts[2] {
			p.reply("-ERR [AUTH] Authentication failed.")
			return
		}
		p.login(authzid, func(string) bool { return true })
		return
	}
	p.login(parts[1], func(pw string) bool { return pw == parts[2] })
}

// login opens user's maildrop if check accepts the password.
func (p *pop3Conn) login(user string, check func(password string) bool) {
	s := p.s
	s.mu.Lock()
	b := s.boxes[user]
	ok := b != nil && b.password != "\x00" && check(b.password)
	reject, inUse := s.RejectLogins.Load(), s.inUse[user]
	if ok && !reject && !inUse {
		s.inUse[user] = true
		s.logins++
	}
	s.mu.Unlock()
	switch {
	case !ok:
		p.reply("-ERR [AUTH] Authentication failed.")
	case reject:
		p.reply("-ERR [SYS/PERM] Logins are disabled on %s.", s.Name)
	case inUse:
		p.reply("-ERR [IN-USE] Mailbox is locked by another POP3 session.")
	default:
		p.box, p.name = b, user
		if s.Tracker != nil {
			s.Tracker.login(user, s.Name)
		}
		p.reply("+OK Logged in.")
	}
}

// logout releases the maildrop; commit applies the deletions (UPDATE
// state, RFC 1939 §6), which only QUIT does.
func (p *pop3Conn) logout(commit bool) {
	if p.box == nil {
		return
	}
	s := p.s
	s.mu.Lock()
	if commit {
		var keep []pop3Message
		for i, m := range p.box.msgs {
			if !p.deleted[i+1] {
				keep = append(keep, m)
			}
		}
		p.box.msgs = keep
	}
	delete(s.inUse, p.name)
	s.mu.Unlock()
	if s.Tracker != nil {
		s.Tracker.logout(p.name, s.Name)
	}
	p.box = nil
}

// transaction runs one command after login; true ends the connection.
func (p *pop3Conn) transaction(verb, arg string) bool {
	p.s.mu.Lock()
	msgs := append([]pop3Message(nil), p.box.msgs...)
	p.s.mu.Unlock()
	switch verb {
	case "CAPA":
		p.capa()
	case "NOOP":
		p.reply("+OK")
	case "QUIT":
		p.logout(true)
		p.reply("+OK Logging out.")
		return true
	case "STAT":
		n, size := 0, 0
		for i, m := range msgs {
			if !p.deleted[i+1] {
				n, size = n+1, size+len(m.data)
			}
		}
		p.reply("+OK %d %d", n, size)
	case "LIST", "UIDL":
		p.list(verb, arg, msgs)
	case "RETR", "TOP":
		p.retr(verb, arg, msgs)
	case "DELE":
		if i, ok := p.msgNum(arg, msgs); ok {
			p.deleted[i] = true
			p.reply("+OK Marked to be deleted.")
		}
	case "RSET":
		clear(p.deleted)
		p.reply("+OK")
	default:
		p.reply("-ERR Unknown command.")
	}
	return false
}

// msgNum parses a message number that names a message not deleted, or
// answers -ERR.
func (p *pop3Conn) msgNum(arg string, msgs []pop3Message) (int, bool) {
	i, err := strconv.Atoi(strings.TrimSpace(arg))
	switch {
	case err != nil:
		p.reply("-ERR Invalid message number.")
	case i < 1 || i > len(msgs):
		p.reply("-ERR There's no message %d.", i)
	case p.deleted[i]:
		p.reply("-ERR Message is deleted.")
	default:
		return i, true
	}
	return 0, false
}

func (p *pop3Conn) list(verb, arg string, msgs []pop3Message) {
	field := func(i int) string {
		if verb == "UIDL" {
			return msgs[i-1].uid
		}
		return strconv.Itoa(len(msgs[i-1].data))
	}
	if strings.TrimSpace(arg) != "" {
		if i, ok := p.msgNum(arg, msgs); ok {
			p.reply("+OK %d %s", i, field(i))
		}
		return
	}
	var lines []string
	for i := 1; i <= len(msgs); i++ {
		if !p.deleted[i] {
			lines = append(lines, fmt.Sprintf("%d %s", i, field(i)))
		}
	}
	first := "+OK"
	if verb == "LIST" {
		first = fmt.Sprintf("+OK %d messages:", len(lines))
	}
	p.multi(first, lines)
}

// retr is RETR n, and TOP n k: the header, the blank line and k body lines.
func (p *pop3Conn) retr(verb, arg string, msgs []pop3Message) {
	num, rest, _ := strings.Cut(strings.TrimSpace(arg), " ")
	i, ok := p.msgNum(num, msgs)
	if !ok {
		return
	}
	data := msgs[i-1].data
	lines := strings.Split(strings.TrimSuffix(data, "\r\n"), "\r\n")
	if verb == "RETR" {
		p.multi(fmt.Sprintf("+OK %d octets", len(data)), lines)
		return
	}
	k, err := strconv.Atoi(strings.TrimSpace(rest))
	if err != nil || k < 0 {
		p.reply("-ERR Invalid number of lines.")
		return
	}
	head := len(lines)
	for j, l := range lines {
		if l == "" {
			head = j + 1
			break
		}
	}
	p.multi("+OK", lines[:min(len(lines), head+k)])
}
