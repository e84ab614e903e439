package auth_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"mailproxy/proxy/auth"
)

// A Penalty as a session sees it: each failure of alice from one address
// waits longer, the eleventh attempt is refused, and bob from the same
// address is not slowed at all.
func ExamplePenalty() {
	var waited []time.Duration
	p := auth.NewPenalty(auth.PenaltyOptions{
		Window: 15 * time.Minute, BaseDelay: 2 * time.Second, MaxDelay: 15 * time.Second,
		IPUserLimit: 10, IPLimit: 1000,
		Log:  slog.New(slog.DiscardHandler),                                           // a real one logs each refusal for fail2ban
		Wait: func(_ context.Context, d time.Duration) { waited = append(waited, d) }, // a real one sleeps
	})
	ctx := context.Background()
	g := p.Guard("192.0.2.7") // one per session, for its client address
	for range 10 {
		if g.Allow(ctx, "alice") == nil {
			g.Failed(ctx, "alice") // the backend said no
		}
	}
	fmt.Println(waited)
	fmt.Println(g.Allow(ctx, "alice"))
	fmt.Println(g.Allow(ctx, "bob"))
	// Output:
	// [2s 4s 8s 15s 15s 15s 15s 15s 15s 15s]
	// too many failed logins
	// <nil>
}
