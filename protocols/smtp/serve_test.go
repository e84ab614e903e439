package smtp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
)

// testSession is a Session on a loopback client connection whose Dial
// hands out a scripted backend over a pipe.
type testSession struct {
	s        *protocols.Session
	client   *bufio.ReadWriter
	conn     net.Conn
	fake     *fakeBackend
	released atomic.Int32
}

func newTestSession(t *testing.T, script map[string]string) *testSession {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); sc.Close() })
	ts := &testSession{conn: cc, client: bufio.NewReadWriter(bufio.NewReader(cc), bufio.NewWriter(cc))}
	ts.s = &protocols.Session{
		ID: "test", Conn: sc, Log: discardLog(), Hostname: "mx.test", SMTPAuth: "off", MaxLine: 8192,
		Dial: func(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
			bc, bs := net.Pipe()
			ts.fake = startFake(t, bs, "220 backend\r\n", script)
			b := protocols.NewBackend(bc, "fake", "pipe", func() { ts.released.Add(1) })
			if err := hello(ctx, b); err != nil {
				b.Close()
				return nil, err
			}
			return b, nil
		},
	}
	return ts
}

func (ts *testSession) say(t *testing.T, line, wantPrefix string) string {
	t.Helper()
	if line != "" {
		ts.client.WriteString(line + "\r\n")
		ts.client.Flush()
	}
	ts.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		got, err := ts.client.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", line, err)
		}
		if len(got) > 3 && got[3] == '-' {
			continue
		}
		if !strings.HasPrefix(got, wantPrefix) {
			t.Fatalf("after %q: got %q, want %q", line, got, wantPrefix)
		}
		return got
	}
}

// serve runs Serve and returns a channel with its result.
func serve(ctx context.Context, s *protocols.Session) <-chan error {
	done := make(chan error, 1)
	go func() {
		relay, err := Handler{}.Serve(ctx, s)
		if relay != nil {
			err = errors.New("got a relay")
		}
		done <- err
	}()
	return done
}

func waitServe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// settle waits until the goroutine count is back to at most n.
func settle(t *testing.T, n int) {
	t.Helper()
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return runtime.NumGoroutine() <= n }) {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left, want %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
	}
}

// TestServeQuit: QUIT ends Serve with nil, says QUIT to the backend and
// releases it, and leaves no goroutine behind.
func TestServeQuit(t *testing.T) {
	base := runtime.NumGoroutine()
	ts := newTestSession(t, map[string]string{"EHLO": "250-backend\r\n250 SIZE 5000\r\n", "QUIT": "221 bye\r\n"})
	done := serve(context.Background(), ts.s)
	ts.say(t, "", "220 mx.test ESMTP")
	ts.say(t, "EHLO client.example", "250 SIZE 5000")
	ts.say(t, "QUIT", "221 ")
	if err := waitServe(t, done); err != nil {
		t.Errorf("Serve: %v", err)
	}
	<-ts.fake.done
	if got := ts.fake.commands(); got[len(got)-1] != "QUIT" || ts.released.Load() != 1 {
		t.Errorf("backend saw %q, released %d times", got, ts.released.Load())
	}
	ts.conn.Close()
	ts.s.Conn.Close()
	settle(t, base)
}

// TestServeCancel: a cancelled session ends Serve even while the backend
// does not answer, and releases the backend.
func TestServeCancel(t *testing.T) {
	base := runtime.NumGoroutine()
	ts := newTestSession(t, map[string]string{"EHLO": "250 backend\r\n"}) // MAIL hangs
	ctx, cancel := context.WithCancel(context.Background())
	done := serve(ctx, ts.s)
	ts.say(t, "", "220 ")
	ts.say(t, "EHLO client.example", "250 ")
	ts.client.WriteString("MAIL FROM:<a@example.org>\r\n")
	ts.client.Flush()
	waitUntil(t, func() bool { c := ts.fake.commands(); return len(c) > 0 && strings.HasPrefix(c[len(c)-1], "MAIL") })
	cancel()
	waitServe(t, done)
	if ts.released.Load() != 1 {
		t.Errorf("backend released %d times", ts.released.Load())
	}
	ts.conn.Close()
	<-ts.fake.done
	settle(t, base)
}

// TestServeClientGone: a client that disconnects mid-session ends Serve.
func TestServeClientGone(t *testing.T) {
	base := runtime.NumGoroutine()
	ts := newTestSession(t, map[string]string{"EHLO": "250 backend\r\n", "QUIT": "221 bye\r\n"})
	done := serve(context.Background(), ts.s)
	ts.say(t, "", "220 ")
	ts.say(t, "EHLO client.example", "250 ")
	ts.conn.Close()
	waitServe(t, done)
	<-ts.fake.done
	settle(t, base)
}

// TestServeNoBackend: without a backend EHLO gets 421 and the connection
// closes; Serve reports why.
func TestServeNoBackend(t *testing.T) {
	ts := newTestSession(t, nil)
	ts.s.Dial = func(context.Context, string, func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
		return nil, errors.New("pick backend: no backend available")
	}
	done := serve(context.Background(), ts.s)
	ts.say(t, "", "220 ")
	ts.say(t, "EHLO client.example", "421 4.3.0 ")
	ts.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(ts.client); err != nil || len(rest) != 0 {
		t.Errorf("after 421: %q %v", rest, err)
	}
	if err := waitServe(t, done); err == nil {
		t.Error("Serve says nothing went wrong")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	if !testkit.Eventually(5*time.Second, 2*time.Millisecond, cond) {
		t.Fatal("timed out")
	}
}
