package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"mailproxy/protocols"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// relayFixture is client <-> [proxy relay] <-> backend over real sockets.
type relayFixture struct {
	client, backend net.Conn
	done            chan relayResult
}

func startRelay(t *testing.T, idle time.Duration, clientBuf, backBuf string) *relayFixture {
	client, proxyFront := tcpPair(t)
	proxyBack, backend := tcpPair(t)
	f := &relayFixture{client: client, backend: backend, done: make(chan relayResult, 1)}
	r := &protocols.Relay{
		Client: proxyFront, ClientBuf: []byte(clientBuf),
		Backend: protocols.NewBackend(proxyBack, "b", "", nil), BackBuf: []byte(backBuf),
	}
	go func() { f.done <- relay(context.Background(), r, idle) }()
	return f
}

func (f *relayFixture) wait(t *testing.T) relayResult {
	t.Helper()
	select {
	case r := <-f.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
		return relayResult{}
	}
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

func TestRelayBothWaysAndHalfClose(t *testing.T) {
	f := startRelay(t, time.Minute, "early-client ", "early-backend ")
	if got := readN(t, f.backend, 13); got != "early-client " {
		t.Fatalf("backend got %q", got)
	}
	if got := readN(t, f.client, 14); got != "early-backend " {
		t.Fatalf("client got %q", got)
	}
	io.WriteString(f.client, "a LOGOUT\r\n")
	if got := readN(t, f.backend, 10); got != "a LOGOUT\r\n" {
		t.Fatalf("backend got %q", got)
	}
	// The client ends its half; the backend still answers, then closes.
	f.client.(*net.TCPConn).CloseWrite()
	f.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := f.backend.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("backend read after client half-close: %d, %v", n, err)
	}
	io.WriteString(f.backend, "* BYE\r\na OK\r\n")
	f.backend.Close()
	f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(f.client)
	if err != nil || string(rest) != "* BYE\r\na OK\r\n" {
		t.Fatalf("client got %q, %v", rest, err)
	}
	r := f.wait(t)
	if r.err != nil || r.up != 23 || r.down != 27 {
		t.Fatalf("relay result %+v, want up 23 down 27 no error", r)
	}
}

func TestRelayIdleTimeout(t *testing.T) {
	f := startRelay(t, 100*time.Millisecond, "", "")
	r := f.wait(t)
	if !errors.Is(r.err, errIdle) {
		t.Fatalf("relay ended with %v, want idle timeout", r.err)
	}
}

// TestRelayOneWayTrafficIsNotIdle: a long download with a silent client
// (IMAP FETCH, or IDLE updates) must not trip the idle timeout.
func TestRelayOneWayTrafficIsNotIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	f := startRelay(t, idle, "", "")
	tick := time.NewTicker(idle / 6)
	defer tick.Stop()
	for range 18 { // three idle periods of backend-only traffic
		<-tick.C
		io.WriteString(f.backend, "* 1 EXISTS\r\n")
		readN(t, f.client, 12)
	}
	io.WriteString(f.client, "b NOOP\r\n")
	if got := readN(t, f.backend, 8); got != "b NOOP\r\n" {
		t.Fatalf("client direction died during one-way traffic: got %q", got)
	}
	select {
	case r := <-f.done:
		t.Fatalf("relay ended early: %+v", r)
	default:
	}
}
