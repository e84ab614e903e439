package smtp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	gosmtp "github.com/emersion/go-smtp"
)

// ServeConn runs srv (SMTP or LMTP) on the one connection c until closed is
// closed (c was closed) or ctx ends, then shuts srv down. It returns only
// after go-smtp's connection goroutine has ended, so nothing outlives the
// session.
//
// go-smtp's Server only serves listeners, so c is handed to it through a
// listener that yields it once.
func ServeConn(ctx context.Context, srv *gosmtp.Server, c net.Conn, closed <-chan struct{}) {
	ln := newOneConnListener(c)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	<-ln.handedOff // the connection's goroutine is counted: Shutdown waits for it
	select {
	case <-closed:
	case <-ctx.Done():
		c.Close()
	}
	srv.Shutdown(context.Background()) // closes ln; waits for the connection goroutine
	<-served
}

// oneConnListener hands one connection to go-smtp's Server.Serve and then
// blocks until closed. Serve calls Accept again only after it has counted
// the connection's goroutine, so handedOff closing means Shutdown will wait
// for that goroutine.
type oneConnListener struct {
	conn      net.Conn // nil once taken; only Serve's goroutine touches it
	handedOff chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, handedOff: make(chan struct{}), done: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	select {
	case <-l.handedOff:
	default:
		close(l.handedOff)
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return oneConnAddr{} }

type oneConnAddr struct{}

func (oneConnAddr) Network() string { return "tcp" }
func (oneConnAddr) String() string  { return "session" }

// ErrorLog sends go-smtp's own complaints (connection errors, recovered
// panics) to a session log, at debug level but for panics. They never carry
// client data.
type ErrorLog struct {
	Log  *slog.Logger
	Name string // "smtp" or "lmtp", for the message
}

func (l ErrorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l ErrorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l ErrorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.Log.Error(l.Name+" server panic", "detail", msg)
		return
	}
	l.Log.Debug(l.Name+" server", "detail", msg)
}
