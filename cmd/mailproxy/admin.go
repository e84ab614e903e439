package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"net/http"
	"time"

	"mailproxy/proxy"
	"mailproxy/proxy/admin"
	"mailproxy/proxy/peer"
)

// startAdmin serves the admin API on [admin] listen, when it is not off,
// and returns the function that stops it. The API is wired here rather
// than in proxy.Server so that admin imports proxy and not the other way
// round. It runs in both roles of a pair; node is nil without [peer].
func startAdmin(srv *proxy.Server, node *peer.Node, sync *proxy.AdminSync, cfg *config.Config, log *slog.Logger, rl *reloader) (stop func(), err error) {
	if cfg.Admin.Listen == "" {
		return func() {}, nil
	}
	opts := admin.Options{Logger: log, Metrics: srv.MetricsHandler(), Address: cfg.Admin.Listen, OnAction: sync.Changed}
	if rl.load != nil {
		opts.Reload = func(context.Context) ([]string, error) { return rl.reload() }
	}
	if node != nil {
		opts.Peer = node.Status
	}
	if cfg.Admin.TokenFile != "" {
		if opts.Token, err = admin.ReadToken(cfg.Admin.TokenFile); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	api := admin.New(srv, opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := api.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		api.Shutdown(ctx)
		<-done
	}, nil
}
