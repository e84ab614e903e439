package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"mailproxy/protocols"
	mtls "mailproxy/tls"
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
	return relayFrom(t, relayOpts{idle: idle}, client, proxyFront, clientBuf, backBuf)
}

// startTLSRelay is startRelay with TLS between the client and the proxy,
// as after STARTTLS or on an implicit-TLS listener: one direction reads
// TLS and writes TCP, the other reads TCP and writes TLS, and neither can
// splice.
func startTLSRelay(t *testing.T, idle time.Duration) *relayFixture {
	return startTLSRelayOpts(t, relayOpts{idle: idle})
}

func startTLSRelayOpts(t *testing.T, o relayOpts) *relayFixture {
	cert, roots, err := mtls.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	rawClient, rawFront := tcpPair(t)
	client := tls.Client(rawClient, &tls.Config{ServerName: "localhost", RootCAs: roots})
	front := tls.Server(rawFront, &tls.Config{Certificates: []tls.Certificate{cert}})
	shook := make(chan error, 1)
	go func() { shook <- front.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-shook; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	return relayFrom(t, o, client, front, "", "")
}

// relayFrom runs a relay with o between proxyFront and a new backend
// connection; o.onEnd is the fixture's.
func relayFrom(t *testing.T, o relayOpts, client, proxyFront net.Conn, clientBuf, backBuf string) *relayFixture {
	return relayCtx(t, context.Background(), o, client, proxyFront, clientBuf, backBuf)
}

func relayCtx(t *testing.T, ctx context.Context, o relayOpts, client, proxyFront net.Conn, clientBuf, backBuf string) *relayFixture {
	proxyBack, backend := tcpPair(t)
	f := &relayFixture{client: client, backend: backend, done: make(chan relayResult, 1)}
	r := &protocols.Relay{
		Client: proxyFront, ClientBuf: []byte(clientBuf),
		Backend: protocols.NewBackend(proxyBack, "b", "", nil), BackBuf: []byte(backBuf),
	}
	o.onEnd = func(res relayResult) { f.done <- res }
	go relay(ctx, r, o)
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

// TestRelayBulkIntact: 8 MiB each way at once, more than the sockets
// buffer, so that splices and writes stop half-way and resume; every
// byte arrives, in order, and is counted.
func TestRelayBulkIntact(t *testing.T) {
	const size = 8 << 20
	f := startRelay(t, time.Minute, "", "")
	exchangeBulk(t, f.client, f.backend, size)
	f.client.(*net.TCPConn).CloseWrite()
	f.backend.(*net.TCPConn).CloseWrite()
	if r := f.wait(t); r.err != nil || r.up != size || r.down != size {
		t.Fatalf("relay result %+v, want up and down %d, no error", r, size)
	}
}

// TestRelayTLSOneByteRecord: a TLS record of a single byte is relayed on
// its own. A wait on a TLS source reads one byte, and the relay must not
// then block for more while holding it.
func TestRelayTLSOneByteRecord(t *testing.T) {
	f := startTLSRelay(t, time.Minute)
	for _, b := range []string{"x", "\n", "y"} {
		io.WriteString(f.client, b)
		if got := readN(t, f.backend, 1); got != b {
			t.Fatalf("backend got %q, want %q", got, b)
		}
		io.WriteString(f.backend, "+")
		if got := readN(t, f.client, 1); got != "+" {
			t.Fatalf("client got %q", got)
		}
	}
	io.WriteString(f.client, "a LOGOUT\r\n")
	if got := readN(t, f.backend, 10); got != "a LOGOUT\r\n" {
		t.Fatalf("backend got %q", got)
	}
	f.client.Close()
	f.backend.Close()
	if r := f.wait(t); r.up != 13 || r.down != 3 {
		t.Fatalf("relay result %+v, want up 13 down 3", r)
	}
}

// TestRelayTLSBulk: 1 MiB each way through a TLS client side, copied
// through pooled buffers.
func TestRelayTLSBulk(t *testing.T) {
	const size = 1 << 20
	f := startTLSRelay(t, time.Minute)
	exchangeBulk(t, f.client, f.backend, size)
	f.client.(*tls.Conn).CloseWrite()
	f.backend.(*net.TCPConn).CloseWrite()
	if r := f.wait(t); r.err != nil || r.up != size || r.down != size {
		t.Fatalf("relay result %+v, want up and down %d, no error", r, size)
	}
}

// exchangeBulk sends size bytes each way at once and checks that they
// arrive intact.
func exchangeBulk(t *testing.T, client, backend net.Conn, size int) {
	t.Helper()
	up, down := pattern(size, 1), pattern(size, 2)
	sent := make(chan error, 2)
	go func() { _, err := client.Write(up); sent <- err }()
	go func() { _, err := backend.Write(down); sent <- err }()
	got := make([]byte, size)
	backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(backend, got); err != nil || !bytes.Equal(got, up) {
		t.Fatalf("backend read: %v, intact %v", err, bytes.Equal(got, up))
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client read: %v, intact %v", err, bytes.Equal(got, down))
	}
	for range 2 {
		if err := <-sent; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
}

// pattern is size bytes that differ with seed and do not repeat with a
// short period, so that a lost, doubled or reordered piece shows.
func pattern(size int, seed uint32) []byte {
	b := make([]byte, size)
	x := seed*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// TestRelayStalledWrite (issue 10, point 5): a client that stops reading
// in the middle of a large download (a FETCH it never reads) ends the
// session once a write has made no progress for the idle timeout, on
// plain TCP (splice) and TLS alike; the backend connection is closed too.
func TestRelayStalledWrite(t *testing.T) {
	const idle = 300 * time.Millisecond
	for name, start := range map[string]func(*testing.T, time.Duration) *relayFixture{
		"tcp": func(t *testing.T, d time.Duration) *relayFixture { return startRelay(t, d, "", "") },
		"tls": startTLSRelay,
	} {
		t.Run(name, func(t *testing.T) {
			f := start(t, idle)
			stop := make(chan struct{})
			fed := make(chan struct{})
			go func() { // the backend sends as long as it can
				defer close(fed)
				chunk := bytes.Repeat([]byte("x"), 64<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					f.backend.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err := f.backend.Write(chunk); err != nil {
						return
					}
				}
			}()
			began := time.Now()
			r := f.wait(t)
			close(stop)
			<-fed
			took := time.Since(began)
			t.Logf("relay ended after %v with %v, %d bytes down", took, r.err, r.down)
			if !errors.Is(r.err, errStalled) {
				t.Errorf("relay ended with %v, want a stalled write", r.err)
			}
			if took > 3*idle+time.Second {
				t.Errorf("relay ended after %v, want about the idle timeout (%v)", took, idle)
			}
		})
	}
}
