package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
)

// testPoller is a poller of its own for one test, sweeping for the
// shortest idle timeout the tests use.
func testPoller(t *testing.T) *poller {
	t.Helper()
	p, err := newPoller(300 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

// startParkedRelay is startRelay with parking after park.
func startParkedRelay(t *testing.T, p *poller, idle, park time.Duration) *relayFixture {
	client, front := tcpPair(t)
	return relayFrom(t, relayOpts{idle: idle, park: park, poller: p}, client, front, "", "")
}

// waitParked waits until the poller holds n directions.
func waitParked(t *testing.T, p *poller, n int) {
	t.Helper()
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return p.count() == n }) {
		t.Fatalf("%d directions parked, want %d", p.count(), n)
	}
}

// parkedWays lists the directions (0: client to backend) parked now.
func parkedWays(p *poller) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, d := range p.parked {
		b.WriteByte('0' + d.dir)
	}
	return b.String()
}

// relayGoroutines counts the goroutines inside a relay direction.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "proxy.(*direction).pipe(")
}

// TestParkResumesBothWays: a relay quiet both ways parks both directions
// (no goroutine left), and the first byte from either side resumes it,
// again and again, with every byte delivered in order.
func TestParkResumesBothWays(t *testing.T) {
	p := testPoller(t)
	before := relayGoroutines()
	f := startParkedRelay(t, p, time.Minute, 20*time.Millisecond)
	for i, tag := range []string{"a", "b", "c"} {
		waitParked(t, p, 2)
		if n := relayGoroutines() - before; n != 0 {
			t.Fatalf("round %d: %d relay goroutines while parked", i, n)
		}
		if i%2 == 0 {
			io.WriteString(f.client, tag+" NOOP\r\n")
			if got := readN(t, f.backend, 8); got != tag+" NOOP\r\n" {
				t.Fatalf("backend got %q", got)
			}
			io.WriteString(f.backend, tag+" OK\r\n")
		} else {
			// The backend speaks first (an IDLE update), then the client.
			io.WriteString(f.backend, "* 3 EXISTS\r\n")
			if got := readN(t, f.client, 12); got != "* 3 EXISTS\r\n" {
				t.Fatalf("client got %q", got)
			}
			io.WriteString(f.client, tag+" DONE\r\n")
			if got := readN(t, f.backend, 8); got != tag+" DONE\r\n" {
				t.Fatalf("backend got %q", got)
			}
			io.WriteString(f.backend, tag+" OK\r\n")
		}
		if got := readN(t, f.client, 6); got != tag+" OK\r\n" {
			t.Fatalf("client got %q", got)
		}
	}
	f.client.Close()
	f.backend.Close()
	if r := f.wait(t); r.up != 24 || r.down != 30 {
		t.Fatalf("relay result %+v, want up 24 down 30", r)
	}
}

// TestParkReplySideWhileClientActive: with the client side in its
// (long) park period, the backend side parks soon after each answer
// (replyPark), leaving the session one goroutine, and the next command
// takes it back itself: every answer arrives, in order, and the relay
// ends at its idle timeout counted from the last byte, not from when the
// backend side parked.
func TestParkReplySideWhileClientActive(t *testing.T) {
	const idle = 1200 * time.Millisecond
	p := testPoller(t)
	before := relayGoroutines()
	f := startParkedRelay(t, p, idle, 800*time.Millisecond)
	var last time.Time
	for i, tag := range []string{"a", "b", "c", "d"} {
		io.WriteString(f.client, tag+" NOOP\r\n")
		if got := readN(t, f.backend, 8); got != tag+" NOOP\r\n" {
			t.Fatalf("round %d: backend got %q", i, got)
		}
		io.WriteString(f.backend, "* 1 EXISTS\r\n"+tag+" OK\r\n")
		if got := readN(t, f.client, 18); got != "* 1 EXISTS\r\n"+tag+" OK\r\n" {
			t.Fatalf("round %d: client got %q", i, got)
		}
		last = time.Now()
		waitParked(t, p, 1)
		if got := parkedWays(p); got != "1" {
			t.Fatalf("round %d: directions %q parked, want the backend side (1) only", i, got)
		}
		if n := relayGoroutines() - before; n != 1 {
			t.Fatalf("round %d: %d relay goroutines with the backend side parked, want 1", i, n)
		}
	}
	// Now updates only, for longer than the client side's park period:
	// the client side parks first, the backend side after the last one.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for range 20 {
		<-tick.C
		io.WriteString(f.backend, "* 2 EXISTS\r\n")
		readN(t, f.client, 12)
		last = time.Now()
	}
	waitParked(t, p, 2)
	r := f.wait(t)
	if !errors.Is(r.err, errIdle) {
		t.Fatalf("relay ended with %v, want idle timeout", r.err)
	}
	if el := time.Since(last); el < idle-50*time.Millisecond {
		t.Fatalf("ended %v after the last byte, before the idle timeout %v", el, idle)
	}
	if r.up != 32 || r.down != 72+20*12 {
		t.Fatalf("relay result %+v, want up 32 down %d", r, 72+20*12)
	}
}

// TestParkBulkWhileParking: large literals (an APPEND one way, a FETCH
// the other) start at moments around the park period, so that some
// arrive while a direction is parking, parked or resuming; every byte
// arrives once and in order, both ways at once.
func TestParkBulkWhileParking(t *testing.T) {
	testParkBulk(t, func(p *poller, park time.Duration) *relayFixture {
		return startParkedRelay(t, p, time.Minute, park)
	})
}

// TestParkTLSBulkWhileParking is the same with TLS between client and
// proxy: the TLS side parks only with nothing decrypted and unread.
func TestParkTLSBulkWhileParking(t *testing.T) {
	testParkBulk(t, func(p *poller, park time.Duration) *relayFixture {
		return startTLSRelayOpts(t, relayOpts{idle: time.Minute, park: park, poller: p})
	})
}

func testParkBulk(t *testing.T, start func(*poller, time.Duration) *relayFixture) {
	const park = 10 * time.Millisecond
	const size = 256 << 10
	p := testPoller(t)
	f := start(p, park)
	up, down := pattern(16*size, 3), pattern(16*size, 4)
	var upAll, downAll []byte
	for i := range 16 {
		// 0 to 15 ms after the last exchange: before, during and after parking.
		time.Sleep(time.Duration(i) * time.Millisecond) // a moment on purpose, not a wait for an event
		u, d := up[i*size:(i+1)*size], down[i*size:(i+1)*size]
		sent := make(chan error, 2)
		go func() { _, err := f.client.Write(u); sent <- err }()
		go func() { _, err := f.backend.Write(d); sent <- err }()
		gotU, gotD := make([]byte, size), make([]byte, size)
		f.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(f.backend, gotU); err != nil {
			t.Fatalf("round %d: backend read: %v", i, err)
		}
		f.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(f.client, gotD); err != nil {
			t.Fatalf("round %d: client read: %v", i, err)
		}
		for range 2 {
			if err := <-sent; err != nil {
				t.Fatalf("round %d: write: %v", i, err)
			}
		}
		upAll, downAll = append(upAll, gotU...), append(downAll, gotD...)
	}
	if !bytes.Equal(upAll, up) || !bytes.Equal(downAll, down) {
		t.Fatalf("bytes lost or reordered: up intact %v, down intact %v", bytes.Equal(upAll, up), bytes.Equal(downAll, down))
	}
	waitParked(t, p, 2)
	f.client.Close()
	f.backend.Close()
	if r := f.wait(t); r.up != int64(len(up)) || r.down != int64(len(down)) {
		t.Fatalf("relay result %+v, want up and down %d", r, len(up))
	}
}

// TestParkLiteralArrivesWhileParking: the client announces a literal,
// the backend's continuation goes out, and the literal comes in many
// small writes spaced around the park period, each possibly landing on a
// direction just parked.
func TestParkLiteralArrivesWhileParking(t *testing.T) {
	p := testPoller(t)
	f := startParkedRelay(t, p, time.Minute, 5*time.Millisecond)
	io.WriteString(f.client, "a APPEND INBOX {40000}\r\n")
	readN(t, f.backend, 24)
	io.WriteString(f.backend, "+ OK\r\n")
	readN(t, f.client, 6)
	lit := pattern(40000, 5)
	go func() {
		for off := 0; off < len(lit); off += 4000 {
			time.Sleep(time.Duration(off/4000%4) * 3 * time.Millisecond) // around the park period, on purpose
			f.client.Write(lit[off : off+4000])
		}
	}()
	got := make([]byte, len(lit))
	f.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(f.backend, got); err != nil || !bytes.Equal(got, lit) {
		t.Fatalf("literal: %v, intact %v", err, bytes.Equal(got, lit))
	}
}

// TestParkIdleTimeout: a relay parked both ways still ends at the idle
// timeout, counted from its last byte.
func TestParkIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	p := testPoller(t)
	start := time.Now()
	f := startParkedRelay(t, p, idle, 20*time.Millisecond)
	waitParked(t, p, 2)
	r := f.wait(t)
	if !errors.Is(r.err, errIdle) {
		t.Fatalf("relay ended with %v, want idle timeout", r.err)
	}
	if el := time.Since(start); el < idle {
		t.Fatalf("ended after %v, before the idle timeout %v", el, idle)
	}
	if n := p.count(); n != 0 {
		t.Fatalf("%d directions left parked", n)
	}
	f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := f.client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after idle timeout: %v, want EOF", err)
	}
}

// TestParkOneWayTrafficIsNotIdle: a silent client parks its direction
// while the backend keeps sending (IDLE updates) for longer than the
// idle timeout; the relay lives on.
func TestParkOneWayTrafficIsNotIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	p := testPoller(t)
	f := startParkedRelay(t, p, idle, 20*time.Millisecond)
	tick := time.NewTicker(idle / 6)
	defer tick.Stop()
	for range 12 {
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

// TestParkKick: cancelling a parked relay's context (a kick, a
// shutdown) closes both connections and ends the relay.
func TestParkKick(t *testing.T) {
	p := testPoller(t)
	ctx, cancel := context.WithCancel(context.Background())
	client, front := tcpPair(t)
	f := relayCtx(t, ctx, relayOpts{idle: time.Minute, park: 10 * time.Millisecond, poller: p}, client, front, "", "")
	waitParked(t, p, 2)
	cancel()
	f.wait(t)
	for name, c := range map[string]net.Conn{"client": f.client, "backend": f.backend} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("%s read after kick: %v, want EOF", name, err)
		}
	}
	if n := p.count(); n != 0 {
		t.Fatalf("%d directions left parked", n)
	}
}

// TestParkHalfCloseWakesOther: the client ends its half while the
// backend direction is parked; the backend direction resumes for the
// grace, the backend's last words arrive, and the relay ends.
func TestParkHalfCloseWakesOther(t *testing.T) {
	p := testPoller(t)
	f := startParkedRelay(t, p, time.Minute, 10*time.Millisecond)
	waitParked(t, p, 2)
	io.WriteString(f.client, "a LOGOUT\r\n")
	f.client.(*net.TCPConn).CloseWrite()
	if got := readN(t, f.backend, 10); got != "a LOGOUT\r\n" {
		t.Fatalf("backend got %q", got)
	}
	io.WriteString(f.backend, "* BYE\r\na OK\r\n")
	f.backend.Close()
	f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(f.client); err != nil || string(rest) != "* BYE\r\na OK\r\n" {
		t.Fatalf("client got %q, %v", rest, err)
	}
	if r := f.wait(t); r.err != nil || r.up != 10 || r.down != 13 {
		t.Fatalf("relay result %+v", r)
	}
}

// TestParkTLSPending: a TLS record that arrives while the direction is
// deciding to park is decrypted into the TLS connection, not left in the
// socket, and must still be relayed: the direction checks before parking.
func TestParkTLSPending(t *testing.T) {
	p := testPoller(t)
	f := startTLSRelayOpts(t, relayOpts{idle: time.Minute, park: 2 * time.Millisecond, poller: p})
	for i := range 200 {
		io.WriteString(f.client, "x")
		if got := readN(t, f.backend, 1); got != "x" {
			t.Fatalf("round %d: backend got %q", i, got)
		}
		if i%20 == 0 {
			time.Sleep(2 * time.Millisecond) // around the park period, on purpose
		}
	}
	f.client.(*tls.Conn).Close()
}

// BenchmarkParkResume is the first reply of a session: the client sends
// a command, the backend answers, the client reads the answer; with the
// relay active (state=active) or parked both ways before each command
// (state=parked, so both directions resume). The difference of the two
// ns/op is what parking adds to a first reply:
//
//	go test -run '^$' -bench ParkResume -count 6 ./proxy/
func BenchmarkParkResume(b *testing.B) {
	for _, state := range []string{"active", "parked"} {
		b.Run("state="+state, func(b *testing.B) {
			p, err := newPoller(time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			defer p.close()
			o := relayOpts{idle: time.Hour}
			if state == "parked" {
				o.park, o.poller = time.Millisecond, p
			}
			client, front := benchPair(b)
			back, backend := benchPair(b)
			done := make(chan relayResult, 1)
			o.onEnd = func(r relayResult) { done <- r }
			r := &protocols.Relay{Client: front, Backend: protocols.NewBackend(back, "b", "", nil)}
			go relay(context.Background(), r, o)
			cmd, reply := []byte("a NOOP\r\n"), []byte("a OK\r\n")
			buf := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if state == "parked" {
					b.StopTimer()
					for p.count() != 2 {
						time.Sleep(100 * time.Microsecond) // no event to wait on: the park deadline
					}
					b.StartTimer()
				}
				client.Write(cmd)
				if _, err := io.ReadFull(backend, buf[:len(cmd)]); err != nil {
					b.Fatal(err)
				}
				backend.Write(reply)
				if _, err := io.ReadFull(client, buf[:len(reply)]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			client.Close()
			backend.Close()
			<-done
		})
	}
}

// benchPair is tcpPair for benchmarks.
func benchPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	x, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	y, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}
