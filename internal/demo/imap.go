// Package demo runs in-memory mail backends: for `mailproxy demo`, which
// needs no real mail server, and as the fake backends of the tests. They
// listen on whatever listener they are given (loopback in tests and demo).
package demo

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Tracker records which users are logged in on which backend, across
// several fake backends, and remembers any user seen on two at once. It is
// the end-to-end check of mailproxy's stickiness.
type Tracker struct {
	mu     sync.Mutex
	where  map[string]map[string]int // user -> backend -> sessions
	splits []string
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{where: make(map[string]map[string]int)} }

func (t *Tracker) login(user, backend string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.where[user]
	if m == nil {
		m = make(map[string]int)
		t.where[user] = m
	}
	m[backend]++
	if len(m) > 1 {
		t.splits = append(t.splits, fmt.Sprintf("%s on %v", user, m))
	}
}

func (t *Tracker) logout(user, backend string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.where[user]
	if m[backend]--; m[backend] <= 0 {
		delete(m, backend)
	}
	if len(m) == 0 {
		delete(t.where, user)
	}
}

// Splits lists every moment a user was logged in on two backends at once.
func (t *Tracker) Splits() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.splits...)
}

// Sessions returns how many sessions user has on each backend now.
func (t *Tracker) Sessions(user string) map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]int{}
	for b, n := range t.where[user] {
		out[b] = n
	}
	return out
}

// IMAPServer is an in-memory IMAP backend (go-imap v2's imapmemserver).
type IMAPServer struct {
	Name    string
	Mem     *imapmemserver.Server
	Tracker *Tracker // optional; set before Serve

	srv *imapserver.Server

	mu      sync.Mutex
	closing bool                         // Close has begun: no more logins
	live    map[*trackedSession]struct{} // logged in, reported to Tracker
}

// NewIMAPServer makes a backend called name with users (name -> password),
// each with an INBOX. tlsConfig enables STARTTLS when not nil.
func NewIMAPServer(name string, users map[string]string, tlsConfig *tls.Config) *IMAPServer {
	s := &IMAPServer{Name: name, Mem: imapmemserver.New(), live: make(map[*trackedSession]struct{})}
	for u, pw := range users {
		s.AddUser(u, pw)
	}
	s.srv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &trackedSession{Session: s.Mem.NewSession(), srv: s}, &imapserver.GreetingData{}, nil
		},
		Caps:         goimap.CapSet{goimap.CapIMAP4rev1: {}},
		TLSConfig:    tlsConfig,
		InsecureAuth: true,
		Logger:       discardLogger{},
	})
	return s
}

// AddUser adds a user with an empty INBOX.
func (s *IMAPServer) AddUser(name, password string) *imapmemserver.User {
	u := imapmemserver.NewUser(name, password)
	u.Create("INBOX", nil)
	s.Mem.AddUser(u)
	return u
}

// Serve serves IMAP on ln until Close.
func (s *IMAPServer) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Close stops the server as a crash would, and closes its connections.
// Every session counts as logged out in the Tracker before the listener
// closes: a crashed server's sessions are gone at once, and nobody (a
// health check, a proxy) can see this one down while its sessions still
// count. Logins that race with Close fail.
func (s *IMAPServer) Close() error {
	s.mu.Lock()
	s.closing = true
	for t := range s.live {
		s.Tracker.logout(t.user, s.Name)
	}
	clear(s.live)
	s.mu.Unlock()
	return s.srv.Close()
}

// trackedSession reports logins and logouts to the tracker.
type trackedSession struct {
	imapserver.Session
	srv  *IMAPServer
	user string
}

func (t *trackedSession) Login(username, password string) error {
	if err := t.Session.Login(username, password); err != nil {
		return err
	}
	s := t.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return &goimap.Error{Type: goimap.StatusResponseTypeNo, Text: "Server shutting down"}
	}
	t.user = username
	if s.Tracker != nil {
		s.live[t] = struct{}{}
		s.Tracker.login(username, s.Name)
	}
	return nil
}

func (t *trackedSession) Close() error {
	s := t.srv
	s.mu.Lock()
	if _, ok := s.live[t]; ok {
		delete(s.live, t)
		s.Tracker.logout(t.user, s.Name)
	}
	s.mu.Unlock()
	return t.Session.Close()
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
