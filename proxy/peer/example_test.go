package peer_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"mailproxy/proxy"
	"mailproxy/proxy/config"
	"mailproxy/proxy/peer"
)

// The wiring of cmd/mailproxy: the node opens and closes the server's
// listeners with its role, while health checks (and the admin API, with
// admin.Options.Peer = node.Status) run in both roles.
func ExampleNode() {
	cfg, err := config.Load("/etc/mailproxy/mailproxy.toml")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{ /* Handlers: ... */ })
	if err != nil {
		log.Fatal(err)
	}
	node, err := peer.New(cfg.Peer, peer.Options{Service: srv})
	if err != nil {
		log.Fatal(err)
	}
	srv.StartBackground()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// Until the signal; then the peer hears our goodbye and takes over.
	if err := node.Run(ctx); err != nil {
		log.Fatal(err)
	}
	grace, cancel := context.WithTimeout(context.Background(), cfg.Limits.ShutdownGrace.Duration)
	defer cancel()
	srv.Shutdown(grace) // the sessions still here get the grace period
}
