//go:build unix

package integration

// Benchmarks of the product's speed targets. Each comparison has a
// path=direct and a path=proxy variant on the same backend, so that
// benchstat puts them side by side with -col /path (bench/run.sh does):
//
//	BenchmarkIMAPFetch          MB/s of FETCH BODY[] of 1 MiB, one logged-in session (target: proxy ≥ 0.95× direct);
//	                            path=forward is the simplest relay Go can do, for scale
//	BenchmarkIMAPFetchMem       the same with go-imap on both ends, for scale
//	BenchmarkIMAPLogin          connect + LOGIN + LOGOUT, one client at a time (latency)
//	BenchmarkIMAPLoginParallel  the same with 16 clients at once (rate; target: proxy ≥ 0.85× direct)
//	BenchmarkIdleSessionMemory  what an idle, parked session costs the proxy after login, tls=off
//	                            and tls=on (targets: ≤ 4 KiB and ≤ 12 KiB)
//
// Everything is on loopback and bounded by -benchtime; without -bench the
// test run only compiles this file.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/benchkit"
	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/proxy"
	mtls "mailproxy/tls"
)

// fetchSize is the message a FETCH benchmark moves per op.
const fetchSize = 1 << 20

// benchTimeout bounds every read and write of a benchmark client.
const benchTimeout = 10 * time.Second

// benchConfig is a plain and an implicit-TLS IMAP listener in front of
// one backend. Logs go nowhere at info level, as a production proxy's
// would cost; health checks are slow so that no probe lands in a
// measurement; the per-IP limit is raised because every benchmark client
// comes from 127.0.0.1; sessions park after 100 ms, so that the idle
// benchmark need not wait the default 5 s.
const benchConfig = `
[admin]
listen = ""

[tls]
cert = "generated.pem"
key = "generated.pem"

[limits]
auth_failure_delay = "0s"
max_connections_per_ip = 100000
max_connections = 100000
park_after = "100ms"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"

[[listener]]
name = "imaps"
protocol = "imap"
address = "127.0.0.1:2"
tls = "implicit"
pool = "main"

[[pool]]
name = "main"

[pool.health]
interval = "1h"

[[pool.backend]]
name = "mail1"
imap = %q
`

// startBenchProxy runs mailproxy on 127.0.0.1:0 in front of backend and
// returns its plain IMAP address.
func startBenchProxy(tb testing.TB, backend string) string {
	return startBenchProxyTLS(tb, backend).plain
}

// benchProxy is a mailproxy started for a benchmark.
type benchProxy struct {
	srv        *proxy.Server
	plain, tls string // the listeners' addresses
	roots      *x509.CertPool
}

// startBenchProxyTLS is startProxy for benchmarks: no debug log kept in
// memory, which would grow with every session.
func startBenchProxyTLS(tb testing.TB, backend string) benchProxy {
	tb.Helper()
	tc, err := testCert()
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, benchConfig, backend), tb.Name())
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Handlers: handlers(), Certs: mtls.StaticCertStore(tc.cert)})
	if err != nil {
		tb.Fatalf("proxy.New: %v", err)
	}
	srv.StartBackground()
	bp := benchProxy{srv: srv, roots: tc.roots}
	done := make(chan error, 2)
	for _, name := range []string{"imap", "imaps"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		if name == "imap" {
			bp.plain = ln.Addr().String()
		} else {
			bp.tls = ln.Addr().String()
		}
		go func() { done <- srv.Serve(name, ln) }()
	}
	tb.Cleanup(func() {
		srv.Close()
		for range 2 {
			if err := <-done; !errors.Is(err, proxy.ErrServerClosed) {
				tb.Errorf("Serve: %v", err)
			}
		}
	})
	return bp
}

// cpuTime is the CPU time this process has used, user and system. Client,
// proxy and backend all run in it, so CPU per op, direct against proxy,
// is what the proxy adds: a figure that, unlike the rate, does not
// depend on how the two cores were shared at the time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// paths are the two ways to the same backend that a benchmark compares.
func paths(direct, proxied string) []struct{ name, addr string } {
	return []struct{ name, addr string }{{"direct", direct}, {"proxy", proxied}}
}

// BenchmarkIMAPFetch is one logged-in session fetching a 1 MiB message
// over and over from a fake backend that answers from memory in one write,
// read by a client that only looks for the literal's size: what is left
// to measure is the path between them. path=forward is the same through
// a bare TCP forwarder (io.Copy both ways, which splices): the floor for
// any relay written in Go on this machine.
func BenchmarkIMAPFetch(b *testing.B) {
	back := startFakeIMAP(b, fetchSize)
	ps := append(paths(back.addr, startBenchProxy(b, back.addr)), struct{ name, addr string }{"forward", startForwarder(b, back.addr)})
	for _, p := range ps {
		b.Run("path="+p.name, func(b *testing.B) {
			c, err := benchkit.DialRaw(p.addr, "bench", "pw", benchTimeout)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(fetchSize)
			cpu := cpuTime()
			for b.Loop() {
				if err := c.Fetch(fetchSize); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// startForwarder relays every connection on 127.0.0.1:0 to backend with
// io.Copy both ways until the benchmark ends.
func startForwarder(tb testing.TB, backend string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	var wg sync.WaitGroup
	forward := func(c net.Conn) {
		defer wg.Done()
		defer c.Close()
		bc, err := net.DialTimeout("tcp", backend, benchTimeout)
		if err != nil {
			return
		}
		defer bc.Close()
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(bc, c); bc.Close() }()
		io.Copy(c, bc)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go forward(c)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// BenchmarkIMAPFetchMem is BenchmarkIMAPFetch with go-imap's in-memory
// server and its client: what a user of those would see, where parsing on
// both ends, not the path, sets the pace.
func BenchmarkIMAPFetchMem(b *testing.B) {
	back := startMemIMAP(b)
	up, err := memClient(back.addr)
	if err != nil {
		b.Fatal(err)
	}
	body := benchMessage(fetchSize)
	cmd := up.Append("INBOX", int64(len(body)), nil)
	cmd.Write(body)
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		b.Fatalf("append: %v", err)
	}
	up.Close()
	for _, p := range paths(back.addr, startBenchProxy(b, back.addr)) {
		b.Run("path="+p.name, func(b *testing.B) {
			c, err := memClient(p.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				b.Fatalf("select: %v", err)
			}
			section := &goimap.FetchItemBodySection{Peek: true}
			opts := &goimap.FetchOptions{BodySection: []*goimap.FetchItemBodySection{section}}
			b.SetBytes(fetchSize)
			cpu := cpuTime()
			for b.Loop() {
				msgs, err := c.Fetch(goimap.SeqSetNum(1), opts).Collect()
				if err != nil || len(msgs) != 1 || len(msgs[0].FindBodySection(section)) != fetchSize {
					b.Fatalf("fetch: %d messages, %v", len(msgs), err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkIMAPLogin is a whole short session, one at a time, with go-imap
// on both ends: connect, read the greeting, LOGIN, LOGOUT. Its ns/op is
// the latency a user sees.
func BenchmarkIMAPLogin(b *testing.B) {
	back := startMemIMAP(b)
	for _, p := range paths(back.addr, startBenchProxy(b, back.addr)) {
		b.Run("path="+p.name, func(b *testing.B) {
			cpu := cpuTime()
			for b.Loop() {
				if err := loginOnce(p.addr); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}

// BenchmarkIMAPLoginParallel is BenchmarkIMAPLogin with 8 clients per
// core (16 on the 2-core reference machine): the rate the machine
// sustains, which is what the login target is about. Client, proxy and
// backend share the cores, so every cycle the proxy spends is one the
// backend does not get.
func BenchmarkIMAPLoginParallel(b *testing.B) {
	back := startMemIMAP(b)
	for _, p := range paths(back.addr, startBenchProxy(b, back.addr)) {
		b.Run("path="+p.name, func(b *testing.B) {
			b.SetParallelism(8)
			cpu := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := loginOnce(p.addr); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportCPU(b, cpu)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}

// benchMessage is a message of exactly size bytes (at least 64): a header
// and lines of text.
func benchMessage(size int) []byte {
	msg := []byte("Subject: benchmark\r\n\r\n")
	line := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n")
	for len(msg)+len(line) <= size {
		msg = append(msg, line...)
	}
	msg = append(msg, line[:size-len(msg)]...)
	return msg
}

func loginOnce(addr string) error {
	c, err := memClient(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Logout().Wait()
}

// memClient dials addr with go-imap's client and logs in as the user
// startMemIMAP knows.
func memClient(addr string) (*imapclient.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, benchTimeout)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(benchTimeout))
	c := imapclient.New(conn, nil)
	if err := c.Login("bench", "pw").Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

// memBackend is the demo's in-memory backend, with one user "bench".
type memBackend struct{ addr string }

func startMemIMAP(tb testing.TB) memBackend {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := demo.NewIMAPServer("mail1", map[string]string{"bench": "pw"}, nil)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	tb.Cleanup(func() { s.Close(); ln.Close(); <-done })
	return memBackend{ln.Addr().String()}
}

// BenchmarkIdleSessionMemory measures what one idle session costs the
// proxy once it is logged in and parked: Go heap and goroutine stacks (the
// target), goroutines and file descriptors; tls=off for plain IMAP,
// tls=on for implicit TLS terminated by the proxy. Kernel memory is not
// measured (on a shared machine /proc/meminfo is too noisy for it);
// descriptors stand in for it: beyond the two sockets, each is half a
// pipe, and a pipe sized for splicing holds 10 to 16 KiB of kernel
// memory. One op is one session; -benchtime 2000x gives the number of
// sessions. Sessions are opened in batches of at most 2000 (fewer when
// the descriptor limit is low), and the ns/op, the cost of opening,
// waiting for and measuring a batch, is not a target.
//
// The clients and the proxy live in this process (the fake backend in a
// child process), so the proxy's share is a difference of two phases of
// each batch. First
// n clients log in directly to the backend; then n clients log in
// through the proxy to the same backend. Each phase starts from a
// measured quiet state, and each ends after every session has answered a
// NOOP (so the proxy's relay runs both ways) and, through the proxy, both
// its directions are parked; the descriptors are counted as they are
// (fds-nogc/session: a proxy that is idle runs a GC only every two
// minutes, so anything released only by GC, such as pipes in a
// sync.Pool, shows there), and then the garbage collector has run
// several times (stacks shrink by half per cycle, as they would in a
// long-running proxy) before the memory and the descriptors (fds/session)
// are counted again. A client keeps nothing but its TCP connection (a TLS
// client drops its tls.Conn once logged in, and never uses the
// connection again), so
//
//	(growth through the proxy − growth direct) / n
//
// is what the proxy holds per session: the session, the lease, the
// backend struct, the relay state, the TLS connection's state and
// whatever the login left reachable; parked-fraction says how many of
// the sessions were parked when it was measured.
//
// It is not the process's memory per session: sessions open one at a
// time here, so nothing depends on how many are mid-login at once, and
// what the runtime keeps outside the heap is left out, above all the two
// poll descriptors of Go's network poller per session (1 KiB, reused from
// one phase to the next, so no difference of phases could show them). The
// RSS of a real burst, and each runtime memory class, is bench/idle.sh's.
func BenchmarkIdleSessionMemory(b *testing.B) {
	back := startFakeIMAPProcess(b)
	px := startBenchProxyTLS(b, back)
	// One session each way first: the poller's goroutine and the TLS
	// server's session ticket keys are the server's, not a session's.
	warm := []func() (net.Conn, error){
		func() (net.Conn, error) { return dialIdle(px.plain, nil) },
		func() (net.Conn, error) {
			return dialIdle(px.tls, &tls.Config{RootCAs: px.roots, ServerName: "127.0.0.1"})
		},
	}
	for _, dial := range warm {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		if !testkit.Eventually(5*time.Second, 10*time.Millisecond, func() bool { return px.srv.ParkedDirections() == 2 }) {
			b.Fatal("the warm-up session did not park")
		}
		c.Close()
		if !testkit.Eventually(5*time.Second, 10*time.Millisecond, func() bool { return px.srv.ParkedDirections() == 0 }) {
			b.Fatal("the warm-up session did not end")
		}
	}
	for _, mode := range []string{"off", "on"} {
		b.Run("tls="+mode, func(b *testing.B) {
			dial := func() (net.Conn, error) { return dialIdle(px.plain, nil) }
			if mode == "on" {
				cfg := &tls.Config{RootCAs: px.roots, ServerName: "127.0.0.1"}
				dial = func() (net.Conn, error) { return dialIdle(px.tls, cfg) }
			}
			direct := func() (net.Conn, error) { return dialIdle(back, nil) }
			batch := idleBatch()
			var dsum, psum footprint
			parked := 0
			for left := b.N; left > 0; left -= batch {
				n := min(left, batch)
				d, _, err := idleGrowth(direct, n, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				p, k, err := idleGrowth(dial, n, 3, px.srv.ParkedDirections)
				if err != nil {
					b.Fatal(err)
				}
				dsum, psum, parked = dsum.add(d), psum.add(p), parked+k/2
			}
			n := float64(b.N)
			own := psum.sub(dsum)
			b.ReportMetric(float64(own.heap+own.stack)/n, "B/session")
			b.ReportMetric(float64(own.heap)/n, "heap-B/session")
			b.ReportMetric(float64(own.stack)/n, "stack-B/session")
			b.ReportMetric(float64(own.goroutines)/n, "goroutines/session")
			b.ReportMetric(float64(own.fds)/n, "fds/session")
			b.ReportMetric(float64(own.fdsNoGC)/n, "fds-nogc/session")
			b.ReportMetric(float64(parked)/n, "parked-fraction")
		})
	}
}

// dialIdle logs in to addr (over TLS with cfg, unless nil), sends a NOOP
// and returns the bare TCP connection: the reader and, with TLS, the
// tls.Conn become garbage, and only the proxy's side of the TLS state
// stays live.
func dialIdle(addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg == nil {
		c, err := benchkit.DialRaw(addr, "idle", "pw", benchTimeout)
		if err != nil {
			return nil, err
		}
		if err := c.Command("n", "NOOP"); err != nil {
			c.Close()
			return nil, err
		}
		return c.Conn, nil
	}
	c, err := benchkit.DialRawTLS(addr, "idle", "pw", cfg, benchTimeout)
	if err != nil {
		return nil, err
	}
	if err := c.Command("n", "NOOP"); err != nil {
		c.Close()
		return nil, err
	}
	return c.Conn.(*tls.Conn).NetConn(), nil
}

// idleBatch is how many sessions are open at once, at most 10,000: each
// costs up to 8 descriptors (client, proxy front and back, backend, and
// two splice pipes if the relay held them while idle). The descriptor
// limit is raised where that is allowed (root).
func idleBatch() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 100
	}
	if want := uint64(8*10000 + 1000); lim.Cur < want {
		raised := syscall.Rlimit{Cur: want, Max: max(lim.Max, want)}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			lim = raised
		}
	}
	return max(1, min(10000, (int(lim.Cur)-500)/8))
}

// idleGrowth opens n logged-in sessions with dial, lets them become idle,
// measures the growth over the quiet state before, closes them and waits
// for the quiet state again. sockets is how many sockets a session has in
// this process once idle: 1 direct (the client's), 3 through the proxy
// (and the proxy's two). parked, if not nil, counts the parked relay directions; it
// returns that count as it was when measured.
func idleGrowth(dial func() (net.Conn, error), n, sockets int, parked func() int) (footprint, int, error) {
	before := measure()
	conns := make([]net.Conn, 0, n)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for i := range n {
		c, err := dial()
		if err != nil {
			closeAll()
			return footprint{}, 0, fmt.Errorf("session %d of %d: %w", i+1, n, err)
		}
		conns = append(conns, c)
	}
	// A relay direction that spliced keeps its pipe for a second after
	// its last byte (relayLinger), and a NOOP should not splice at all;
	// a direction parks after the park period. An idle session is one
	// past both: wait until only the sockets are left and every session
	// is parked, or give up after a while and measure what is there,
	// which then shows in fds-nogc/session (and in fds/session if GC does
	// not release it either) and in parked-fraction. Nothing here runs a
	// GC before the first count.
	testkit.Eventually(5*time.Second, 50*time.Millisecond, func() bool {
		return countFDs() <= before.fds+sockets*n+16 && (parked == nil || parked() >= 2*n)
	})
	after := measure()
	k := 0
	if parked != nil {
		k = parked()
	}
	closeAll()
	if !testkit.Eventually(30*time.Second, 10*time.Millisecond, func() bool { return runtime.NumGoroutine() <= before.goroutines }) {
		return footprint{}, 0, fmt.Errorf("%d goroutines left after closing, %d before", runtime.NumGoroutine(), before.goroutines)
	}
	return after.sub(before), k, nil
}

// footprint is what the process holds at one moment.
type footprint struct {
	heap, stack     int64 // runtime.MemStats HeapInuse, StackInuse
	goroutines, fds int   // after the forced GCs
	fdsNoGC         int   // before them
}

// measure counts the descriptors, forces five GCs, then counts everything.
func measure() footprint {
	noGC := countFDs()
	for range 5 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return footprint{
		heap: int64(m.HeapInuse), stack: int64(m.StackInuse),
		goroutines: runtime.NumGoroutine(), fds: countFDs(), fdsNoGC: noGC,
	}
}

// countFDs counts this process's descriptors. It allocates little (one
// short string per descriptor), so that waiting on it does not itself run
// the GC that would close what a sync.Pool holds.
func countFDs() int {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0
	}
	defer f.Close()
	buf := make([]byte, 32<<10)
	var names []string
	n := -1 // f itself
	for {
		k, err := syscall.ReadDirent(int(f.Fd()), buf)
		if err != nil || k <= 0 {
			return n
		}
		_, _, names = syscall.ParseDirent(buf[:k], -1, names[:0])
		n += len(names)
	}
}

// sub is the growth from g to f. The descriptors before GC grow from g's
// count after GC: g is the quiet state, and what a previous phase left for
// the GC to close is not part of it.
func (f footprint) sub(g footprint) footprint {
	return footprint{f.heap - g.heap, f.stack - g.stack, f.goroutines - g.goroutines, f.fds - g.fds, f.fdsNoGC - g.fds}
}

func (f footprint) add(g footprint) footprint {
	return footprint{f.heap + g.heap, f.stack + g.stack, f.goroutines + g.goroutines, f.fds + g.fds, f.fdsNoGC + g.fdsNoGC}
}

// fakeIMAP is an IMAP server for benchmarks that costs next to nothing:
// every login succeeds, the one mailbox has one message, and a FETCH of
// any kind returns that message as a literal in one write.
type fakeIMAP struct {
	addr  string
	fetch []byte // the untagged FETCH response, literal included

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// fakeGreeting announces SASL-IR and AUTH=PLAIN so that the proxy logs in
// with one round trip, and the post-login capabilities come with the OK.
const fakeGreeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] fake ready\r\n"

// startFakeIMAP serves on 127.0.0.1:0 a message of size bytes until the
// benchmark ends.
func startFakeIMAP(tb testing.TB, size int) *fakeIMAP {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f, stop := serveFakeIMAP(ln, size)
	tb.Cleanup(stop)
	return f
}

// serveFakeIMAP serves a message of size bytes on ln until stop.
func serveFakeIMAP(ln net.Listener, size int) (f *fakeIMAP, stop func()) {
	resp := fmt.Appendf(nil, "* 1 FETCH (BODY[] {%d}\r\n", size)
	resp = append(resp, bytes.Repeat([]byte{'x'}, size)...)
	resp = append(resp, ")\r\n"...)
	f = &fakeIMAP{addr: ln.Addr().String(), fetch: resp, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns[c] = struct{}{}
			f.mu.Unlock()
			f.wg.Add(1)
			go f.serve(c)
		}
	}()
	return f, func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	}
}

// fakeIMAPEnv, when set, makes the test binary a fake IMAP backend and
// nothing else (TestMain): BenchmarkIdleSessionMemory runs its backend in
// a process of its own, so that the backend's goroutine stacks, which
// vary with what each phase sends it, are not in the figures.
const fakeIMAPEnv = "MAILPROXY_BENCH_FAKE_IMAP"

func TestMain(m *testing.M) {
	if os.Getenv(fakeIMAPEnv) == "" {
		os.Exit(m.Run())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serveFakeIMAP(ln, 0)
	fmt.Println(ln.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it or exits
}

// startFakeIMAPProcess runs a fake IMAP backend in a child process until
// the benchmark ends and returns its address.
func startFakeIMAPProcess(tb testing.TB) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeIMAPEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		tb.Fatalf("fake IMAP backend process: %v", err)
	}
	return strings.TrimSpace(line)
}

func (f *fakeIMAP) serve(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 512)
	if _, err := io.WriteString(c, fakeGreeting); err != nil {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb, _, _ := strings.Cut(rest, " ")
		out := net.Buffers{}
		switch strings.ToUpper(verb) {
		case "CAPABILITY":
			out = append(out, []byte("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\n"))
		case "SELECT", "EXAMINE":
			out = append(out, []byte("* 1 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"))
		case "FETCH", "UID":
			out = append(out, f.fetch)
		case "LOGOUT":
			io.WriteString(c, "* BYE\r\n"+tag+" OK LOGOUT completed\r\n")
			return
		}
		switch strings.ToUpper(verb) {
		case "LOGIN", "AUTHENTICATE":
			out = append(out, []byte(tag+" OK [CAPABILITY IMAP4rev1] Logged in\r\n"))
		default:
			out = append(out, []byte(tag+" OK "+verb+" completed\r\n"))
		}
		if _, err := out.WriteTo(c); err != nil {
			return
		}
	}
}
