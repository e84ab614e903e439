package routing_test

import (
	"context"
	"fmt"
	"time"

	"mailproxy/routing"
)

func ExamplePool() {
	var both [routing.NumProtocols]bool
	both[routing.IMAP], both[routing.POP3] = true, true
	pool, err := routing.NewPool(routing.Options{
		Name:     "mail",
		Policies: [routing.NumProtocols]routing.Policy{routing.IMAP: routing.Sticky, routing.POP3: routing.RoundRobin, routing.SMTP: routing.RoundRobin},
		Linger:   time.Minute,
	}, []routing.BackendSpec{
		{Name: "mail1", Weight: 1, Serves: both},
		{Name: "mail2", Weight: 1, Serves: both},
		{Name: "mail3", Weight: 1, Serves: both},
	})
	if err != nil {
		panic(err)
	}

	// A session acquires a lease once it knows the user, and releases it
	// when it ends. If routing must end the session early (the backend
	// went down, an operator kicked it), OnKill's function runs.
	user := routing.Key("Alice", false, "example.org")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	imap, err := pool.Acquire(ctx, routing.IMAP, user)
	if err != nil {
		panic(err) // routing.ErrNoBackend
	}
	imap.OnKill(cancel)
	defer imap.Release()

	// Every other session of the user goes to the same backend while the
	// first is live, whatever the protocol's policy.
	pop, _ := pool.Acquire(ctx, routing.POP3, user)
	pop.Release()
	fmt.Println(user, "IMAP on", imap.Backend.Name, "POP3 on", pop.Backend.Name)

	// An operator kicks the backend: the session's context ends.
	fmt.Println("kicked", pool.Kick(imap.Backend), "session:", ctx.Err())
	// Output:
	// alice@example.org IMAP on mail2 POP3 on mail2
	// kicked 1 session: context canceled
}
