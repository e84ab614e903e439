package integration

import (
	"io"
	"net"
	"sync"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/testkit"
)

// lmtpDelivery is one message a fake LMTP backend took: its recipients
// (those RCPT accepted) and its body.
type lmtpDelivery struct {
	From  string
	Rcpts []string
	Data  []byte
}

// lmtpFake is a fake LMTP backend on go-smtp's server in LMTP mode. It
// answers each recipient after the final dot with "250 2.0.0 saved on
// <name>", and can be told to drop the connection in the middle of the
// next message, or to refuse one recipient at RCPT or after DATA.
type lmtpFake struct {
	name string
	srv  *gosmtp.Server

	mu         sync.Mutex
	deliveries []lmtpDelivery
	dropInData bool
	failRcpt   map[string]*gosmtp.SMTPError // at RCPT
	failAfter  map[string]*gosmtp.SMTPError // after the final dot
}

func newLMTPFake(t *testing.T, name string) (*lmtpFake, string) {
	t.Helper()
	f := &lmtpFake{name: name, failRcpt: map[string]*gosmtp.SMTPError{}, failAfter: map[string]*gosmtp.SMTPError{}}
	f.srv = gosmtp.NewServer(gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) {
		return &lmtpFakeSession{f: f, conn: c.Conn()}, nil
	}))
	f.srv.LMTP = true
	f.srv.Domain = name
	f.srv.ErrorLog = discardLog{}
	return f, testkit.Serve(t, f.srv)
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

// Deliveries returns the messages taken so far.
func (f *lmtpFake) Deliveries() []lmtpDelivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]lmtpDelivery(nil), f.deliveries...)
}

// Recipients counts deliveries per recipient.
func (f *lmtpFake) Recipients() map[string]int {
	out := map[string]int{}
	for _, d := range f.Deliveries() {
		for _, r := range d.Rcpts {
			out[r]++
		}
	}
	return out
}

func (f *lmtpFake) DropInData(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropInData = on
}

type lmtpFakeSession struct {
	f     *lmtpFake
	conn  net.Conn
	from  string
	rcpts []string
}

func (s *lmtpFakeSession) Mail(from string, _ *gosmtp.MailOptions) error {
	s.from, s.rcpts = from, nil
	return nil
}

func (s *lmtpFakeSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if err := s.f.failRcpt[to]; err != nil {
		return err
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *lmtpFakeSession) Data(r io.Reader) error { panic("LMTPData is used in LMTP mode") }

func (s *lmtpFakeSession) LMTPData(r io.Reader, status gosmtp.StatusCollector) error {
	s.f.mu.Lock()
	drop := s.f.dropInData
	s.f.mu.Unlock()
	if drop {
		io.ReadFull(r, make([]byte, 10))
		s.conn.Close()
		return io.ErrUnexpectedEOF
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	var took []string
	for _, rc := range s.rcpts {
		if err := s.f.failAfter[rc]; err != nil {
			status.SetStatus(rc, err)
			continue
		}
		took = append(took, rc)
		status.SetStatus(rc, &gosmtp.SMTPError{Code: 250, EnhancedCode: gosmtp.EnhancedCode{2, 0, 0}, Message: "saved on " + s.f.name})
	}
	s.f.deliveries = append(s.f.deliveries, lmtpDelivery{From: s.from, Rcpts: took, Data: data})
	return nil
}

func (s *lmtpFakeSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *lmtpFakeSession) Logout() error { return nil }
