package redisstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	goredis "github.com/redis/go-redis/v9"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/proxy"
	"mailproxy/proxy/config"
)

// benchUsers is how many users the login benchmark cycles through: enough
// that the store holds many keys, few enough for the fake backend.
const benchUsers = 1000

// BenchmarkLoginStore measures logins per second (connect, LOGIN,
// LOGOUT, 8 clients at once) through one in-process mailproxy with the
// routing table in memory and in Redis on loopback. Clients, backend and
// mailproxy share this process and its cores with redis-server, so every
// microsecond the store path costs anyone shows in full: it is for
// comparing changes to the store path (ns/op, allocs). The figure for
// issue 13 item 6 (store=redis >= 0.9 x store=memory) is bench/store.sh,
// with mailproxy on a core of its own as in production. Run under the
// bench lock:
//
//	flock /tmp/mailproxy-bench.lock go test ./integration/redisstore/ -run '^$' -bench LoginStore -count 5
func BenchmarkLoginStore(b *testing.B) {
	r := testkit.StartRedis(b)
	srv := demo.NewIMAPServer("mail1", nil, nil)
	names := users(benchUsers, "bench")
	for _, u := range names {
		srv.AddUser(u, "pw")
	}
	back := testkit.Serve(b, srv)
	for _, store := range []string{"memory", "redis"} {
		b.Run("store="+store, func(b *testing.B) {
			addr := startInProcess(b, back, store, r.Addr)
			var next atomic.Int64
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					u := names[next.Add(1)%benchUsers]
					if err := loginOnce(addr, u); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}

// startInProcess runs mailproxy in this process in front of backend, with
// the routing table in memory or in the Redis at redisAddr.
func startInProcess(tb testing.TB, backend, store, redisAddr string) string {
	tb.Helper()
	text := fmt.Sprintf(`[admin]
listen = ""
[limits]
auth_failure_delay = "0s"
max_connections_per_ip = 100000
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"
[[pool]]
name = "main"
[pool.health]
interval = "1h"
[[pool.backend]]
name = "mail1"
imap = %q
[store]
type = %q
address = %q
instance = "bench"
prefix = "bench:"
`, backend, store, redisAddr)
	cfg, err := config.Parse([]byte(text), tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handlers: map[string]protocols.Handler{"imap": imap.Handler{}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	srv.StartBackground()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve("imap", ln) }()
	tb.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, proxy.ErrServerClosed) {
			tb.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func loginOnce(addr, user string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(user, "pw").Wait(); err != nil {
		return fmt.Errorf("login %s: %w", user, err)
	}
	return c.Logout().Wait()
}

// TestLoginRateStoreVsMemory runs logins (8 clients at once, 1000 users)
// through two in-process mailproxies, one with the memory table and one
// with the table in Redis, in alternating rounds, and logs the rates, their
// ratio and the CPU per login. It checks that every login succeeded and
// that the Redis rounds went through the store (every user has its
// binding there), not that the ratio reaches issue 13's 0.9: in one
// process on a shared machine the ratio moves with whatever else runs
// (0.76-0.83 measured), and the target is measured by bench/store.sh with
// mailproxy on a core of its own. It measures speed, so it runs only with
// MAILPROXY_BENCH=1, under the bench lock:
func TestLoginRateStoreVsMemory(t *testing.T) {
	if os.Getenv("MAILPROXY_BENCH") != "1" {
		t.Skip("measures speed: set MAILPROXY_BENCH=1 (and hold /tmp/mailproxy-bench.lock)")
	}
	const rounds, perRound, clients = 7, 4000, 8
	r := testkit.StartRedis(t)
	srv := demo.NewIMAPServer("mail1", nil, nil)
	names := users(benchUsers, "bench")
	for _, u := range names {
		srv.AddUser(u, "pw")
	}
	back := testkit.Serve(t, srv)
	addr := map[string]string{
		"memory": startInProcess(t, back, "memory", r.Addr),
		"redis":  startInProcess(t, back, "redis", r.Addr),
	}
	rates := map[string][]float64{}
	cpu := map[string]time.Duration{}
	var rcpu time.Duration // redis-server's, in the redis rounds
	for range rounds {
		for _, store := range []string{"memory", "redis"} {
			var next atomic.Int64
			start, cpu0, rcpu0 := time.Now(), processCPU(), r.CPU()
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > perRound {
							return
						}
						if err := loginOnce(addr[store], names[i%benchUsers]); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			rates[store] = append(rates[store], perRound/time.Since(start).Seconds())
			cpu[store] += processCPU() - cpu0 + r.CPU() - rcpu0
			if store == "redis" {
				rcpu += r.CPU() - rcpu0
			}
		}
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	m, rd := med(rates["memory"]), med(rates["redis"])
	perLogin := func(s string) time.Duration { return cpu[s] / (rounds * perRound) }
	t.Logf("logins/s, median of %d rounds of %d: memory %.0f, redis %.0f: ratio %.2f (in one process; issue 13's 0.90 is measured by bench/store.sh)", rounds, perRound, m, rd, rd/m)
	t.Logf("CPU per login (mailproxy, clients, backend and redis-server): memory %v, redis %v, of which redis-server %v",
		perLogin("memory"), perLogin("redis"), rcpu/(rounds*perRound))
	t.Logf("rounds: memory %.0f, redis %.0f", rates["memory"], rates["redis"])
	c := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := c.Keys(ctx, "bench:u:main:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != benchUsers {
		t.Errorf("the store holds %d bindings after the redis rounds, want one per user (%d): logins did not go through it", len(keys), benchUsers)
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
