// Package sievefake is a small ManageSieve server and client (RFC 5804)
// for tests: the server keeps scripts in memory per user and records who
// logged in; the client speaks just enough of the protocol to log in and
// put, list and get scripts. Neither is a full implementation.
package sievefake

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"

	"mailproxy/internal/testkit"
)

// Server is a fake ManageSieve backend. Set the fields before Serve.
type Server struct {
	Name  string
	Users map[string]string // name -> password
	TLS   *tls.Config       // enables STARTTLS
	Sieve string            // the SIEVE capability; default "fileinto vacation"
	// Mechs is the SASL capability; default "PLAIN LOGIN".
	Mechs string

	mu      sync.Mutex
	scripts map[string]map[string]string // user -> name -> script
	active  map[string]string
	logins  []string
	lines   []string // every command line received, for tests that check what arrived
	srv     testkit.ConnServer
}

// Serve accepts on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	s.srv.Handle = s.serve
	return s.srv.Serve(ln)
}

// Close stops the server and closes its connections.
func (s *Server) Close() error { return s.srv.Close() }

// Logins lists the users who logged in, in order.
func (s *Server) Logins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.logins...)
}

// Lines lists every command line received (literal data excluded).
func (s *Server) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// Script returns user's script called name.
func (s *Server) Script(user, name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.scripts[user][name]
	return v, ok
}

// conn is one client connection of the fake server.
type conn struct {
	s    *Server
	c    net.Conn
	r    *bufio.Reader
	tls  bool
	user string
}

func (s *Server) serve(c net.Conn) {
	cn := &conn{s: s, c: c, r: bufio.NewReader(c)}
	cn.caps("OK \"" + s.Name + " ready.\"")
	for {
		args, err := cn.readArgs()
		if err != nil {
			return
		}
		if len(args) == 0 {
			cn.say(`NO "Empty command."`)
			continue
		}
		if !cn.dispatch(strings.ToUpper(args[0]), args[1:]) {
			return
		}
	}
}

func (cn *conn) say(format string, a ...any) {
	fmt.Fprintf(cn.c, format+"\r\n", a...)
}

func (cn *conn) caps(final string) {
	sieve, mechs := cn.s.Sieve, cn.s.Mechs
	if sieve == "" {
		sieve = "fileinto vacation"
	}
	if mechs == "" {
		mechs = "PLAIN LOGIN"
	}
	cn.say(`"IMPLEMENTATION" "sievefake %s"`, cn.s.Name)
	cn.say(`"SASL" %q`, mechs)
	cn.say(`"SIEVE" %q`, sieve)
	if cn.s.TLS != nil && !cn.tls {
		cn.say(`"STARTTLS"`)
	}
	if cn.user != "" {
		cn.say(`"OWNER" %q`, cn.user)
	}
	cn.say(`"VERSION" "1.0"`)
	cn.say("%s", final)
}

// dispatch runs one command; false ends the connection.
func (cn *conn) dispatch(cmd string, args []string) bool {
	switch {
	case cmd == "LOGOUT":
		cn.say(`OK "Bye."`)
		return false
	case cmd == "CAPABILITY":
		cn.caps(`OK "Capability completed."`)
	case cmd == "NOOP":
		cn.say(`OK "NOOP completed."`)
	case cmd == "STARTTLS" && cn.s.TLS != nil && !cn.tls:
		cn.say(`OK "Begin TLS negotiation now."`)
		tc := tls.Server(cn.c, cn.s.TLS)
		if tc.Handshake() != nil {
			return false
		}
		cn.c, cn.r, cn.tls = tc, bufio.NewReader(tc), true
		cn.caps(`OK "TLS negotiation successful."`)
	case cmd == "AUTHENTICATE" && cn.user == "":
		return cn.authenticate(args)
	case cn.user == "":
		cn.say(`NO "Authenticate first."`)
	default:
		cn.scriptCommand(cmd, args)
	}
	return true
}

func (cn *conn) authenticate(args []string) bool {
	if len(args) == 0 {
		cn.say(`NO "Mechanism needed."`)
		return true
	}
	var user, pass string
	switch strings.ToUpper(args[0]) {
	case "PLAIN":
		var ir string
		if len(args) > 1 {
			ir = args[1]
		} else {
			cn.say(`""`)
			a, err := cn.readArgs()
			if err != nil || len(a) != 1 {
				return false
			}
			ir = a[0]
		}
		b, _ := base64.StdEncoding.DecodeString(ir)
		parts := strings.Split(string(b), "\x00")
		if len(parts) != 3 {
			cn.say(`NO "Bad PLAIN response."`)
			return true
		}
		user, pass = parts[1], parts[2]
	case "LOGIN":
		var answers []string
		for _, ch := range []string{"Username:", "Password:"} {
			cn.say("%q", base64.StdEncoding.EncodeToString([]byte(ch)))
			a, err := cn.readArgs()
			if err != nil || len(a) != 1 {
				return false
			}
			b, _ := base64.StdEncoding.DecodeString(a[0])
			answers = append(answers, string(b))
		}
		user, pass = answers[0], answers[1]
	default:
		cn.say(`NO "Unsupported mechanism."`)
		return true
	}
	if pw, ok := cn.s.Users[user]; !ok || pw != pass {
		cn.say(`NO "Authentication failed."`)
		return true
	}
	cn.user = user
	cn.s.mu.Lock()
	cn.s.logins = append(cn.s.logins, user)
	cn.s.mu.Unlock()
	cn.say(`OK "Logged in."`)
	return true
}

func (cn *conn) scriptCommand(cmd string, args []string) {
	s := cn.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.scripts == nil {
		s.scripts, s.active = map[string]map[string]string{}, map[string]string{}
	}
	mine := s.scripts[cn.user]
	switch {
	case cmd == "PUTSCRIPT" && len(args) == 2:
		if mine == nil {
			mine = map[string]string{}
			s.scripts[cn.user] = mine
		}
		mine[args[0]] = args[1]
		cn.say(`OK "Stored."`)
	case cmd == "LISTSCRIPTS":
		names := make([]string, 0, len(mine))
		for n := range mine {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if s.active[cn.user] == n {
				cn.say("%q ACTIVE", n)
			} else {
				cn.say("%q", n)
			}
		}
		cn.say(`OK "Listscripts completed."`)
	case cmd == "GETSCRIPT" && len(args) == 1:
		v, ok := mine[args[0]]
		if !ok {
			cn.say(`NO (NONEXISTENT) "No such script."`)
			return
		}
		cn.say("{%d}\r\n%s", len(v), v)
		cn.say(`OK "Getscript completed."`)
	case cmd == "SETACTIVE" && len(args) == 1:
		s.active[cn.user] = args[0]
		cn.say(`OK "Active."`)
	default:
		cn.say(`NO "Unknown command."`)
	}
}

// readArgs reads one command: atoms, quoted strings and {n+} / {n}
// literals, decoded.
func (cn *conn) readArgs() ([]string, error) {
	var args []string
	for {
		line, err := cn.r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		cn.s.mu.Lock()
		cn.s.lines = append(cn.s.lines, line)
		cn.s.mu.Unlock()
		more, n, err := splitArgs(line)
		if err != nil {
			return nil, err
		}
		args = append(args, more...)
		if n < 0 {
			return args, nil
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(cn.r, buf); err != nil {
			return nil, err
		}
		args = append(args, string(buf))
	}
}

// splitArgs splits a line; n is the length of a literal that ends it, or -1.
func splitArgs(s string) (args []string, n int, err error) {
	for s != "" {
		switch s[0] {
		case ' ':
			s = s[1:]
		case '"':
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, -1, fmt.Errorf("unterminated string")
			}
			args = append(args, b.String())
			s = s[i+1:]
		case '{':
			v, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(s[1:], "}"), "+"))
			return args, v, err
		default:
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			args = append(args, s[:end])
			s = s[end:]
		}
	}
	return args, -1, nil
}
