package redis

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"mailproxy/internal/testkit"
)

// redisAddr is a Redis for the test: a real redis-server when installed,
// else miniredis (in process). It says which in the test log.
func redisAddr(t testing.TB) string {
	if testkit.RedisServerPath() != "" {
		r := testkit.StartRedis(t)
		t.Logf("real redis-server on %s", r.Addr)
		return r.Addr
	}
	m := miniredis.RunT(t)
	t.Logf("miniredis on %s (redis-server not installed)", m.Addr())
	return m.Addr()
}

// newStore runs a store named instance against addr until the test ends,
// and waits until it is registered.
func newStore(t testing.TB, addr, instance string, ttl time.Duration, mod func(*Options)) *Store {
	t.Helper()
	opts := Options{Addrs: []string{addr}, Instance: instance, LeaseTTL: ttl, Prefix: "t:",
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	if mod != nil {
		mod(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	if !testkit.Eventually(5*time.Second, 5*time.Millisecond, func() bool { return !s.Down() }) {
		t.Fatalf("store %s never registered", instance)
	}
	return s
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
