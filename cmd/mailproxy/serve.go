package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"syscall"
	"time"

	"mailproxy/internal/sdnotify"
	"mailproxy/proxy"
	"mailproxy/proxy/admin"
	"mailproxy/proxy/config"
	"mailproxy/proxy/peer"
)

// The server is what the pair switches; admin reads it.
var (
	_ peer.Service = (*proxy.Server)(nil)
	_ admin.Server = (*proxy.Server)(nil)
)

func cmdRun(args []string, stderr io.Writer) error {
	path, err := parseConfigFlag("run", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, level, stderr)
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Level: level, Handlers: handlers()})
	if err != nil {
		return err
	}
	return serve(srv, cfg, log, func() (*config.Config, error) { return config.Load(path) })
}

// reloader runs one reload at a time, from SIGHUP or POST /reload: load
// the file, let the server check and apply it whole, tell systemd.
type reloader struct {
	srv    *proxy.Server
	log    *slog.Logger
	notify *sdnotify.Notifier
	load   func() (*config.Config, error) // nil: nothing to reload from (demo)

	mu  sync.Mutex
	cfg *config.Config // the config in force, for the notes
}

// reload loads and applies the config file. On any error the old config
// stays in force and the error is logged and returned. notes name what
// changed in the file but only a restart applies.
func (r *reloader) reload() (notes []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.load == nil {
		err := errors.New("no config file to reload")
		r.log.Warn("reload ignored", "err", err)
		return nil, err
	}
	r.notify.Reloading()
	defer r.notify.Ready()
	start := time.Now()
	cfg, err := r.load()
	if err == nil {
		err = r.srv.Reload(cfg)
	}
	if err != nil {
		r.log.Error("reload refused, the old config stays in force", "err", err)
		r.notify.Status("reload refused: " + err.Error())
		return nil, err
	}
	notes = restartNotes(r.cfg, cfg)
	for _, n := range notes {
		r.log.Warn("reload: " + n)
	}
	r.cfg = cfg
	r.log.Info("config reloaded", "listeners", len(cfg.Listeners), "pools", len(cfg.Pools), "took", time.Since(start).Round(time.Microsecond).String())
	r.notify.Status(fmt.Sprintf("serving; config reloaded at %s", time.Now().Format(time.RFC3339)))
	return notes, nil
}

// restartNotes lists what differs between old and cfg that a reload does
// not apply: the admin API, the pair, the routing store and the log format
// are set up once.
func restartNotes(old, cfg *config.Config) []string {
	var notes []string
	if old.Admin != cfg.Admin {
		notes = append(notes, "[admin] changed; it applies at the next restart")
	}
	if !reflect.DeepEqual(old.Peer, cfg.Peer) {
		notes = append(notes, "[peer] changed; it applies at the next restart")
	}
	if !reflect.DeepEqual(old.Store, cfg.Store) {
		notes = append(notes, "[store] changed; it applies at the next restart")
	}
	if old.Log.Format != cfg.Log.Format {
		notes = append(notes, "[log] format changed; it applies at the next restart")
	}
	return notes
}

// serve runs srv until SIGTERM or SIGINT, then shuts down gracefully.
// SIGHUP (and POST /reload) reloads the whole config through load. With
// [peer], the pair's node opens and closes the listeners with its role
// instead of ListenAndServe. Under systemd (Type=notify) it says READY=1
// once serving, RELOADING=1 / READY=1 around each reload, STOPPING=1 on the
// way out, and pings the watchdog from this loop.
func serve(srv *proxy.Server, cfg *config.Config, log *slog.Logger, load func() (*config.Config, error)) error {
	notify := sdnotify.FromEnv()
	rl := &reloader{srv: srv, log: log, notify: notify, load: load, cfg: cfg}
	sync := srv.NewAdminSync()
	node, err := newPeer(srv, sync, cfg, log)
	if err != nil {
		return err
	}
	srv.StartBackground()
	stopAdmin, err := startAdmin(srv, node, sync, cfg, log, rl)
	if err != nil {
		srv.Close()
		return err
	}
	defer stopAdmin()
	errc := make(chan error, 1)
	stopPeer := func() {}
	if node != nil {
		ctx, cancel := context.WithCancel(context.Background())
		stopPeer = func() { cancel(); <-errc }
		go func() { errc <- node.Run(ctx) }()
	} else {
		if err := srv.OpenListeners(); err != nil {
			srv.Close()
			return err
		}
		go func() { errc <- srv.ListenAndServe() }()
	}
	startMemDump()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	var watchdog <-chan time.Time
	if iv := sdnotify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	notify.Ready()
	notify.Status("serving")
	for {
		select {
		case err := <-errc:
			notify.Stopping()
			srv.Close()
			return err
		case <-watchdog:
			notify.Watchdog()
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				rl.reload()
				continue
			}
			notify.Stopping()
			grace := rl.config().Limits.ShutdownGrace.Duration
			log.Info("shutting down", "signal", sig.String(), "grace", grace.String())
			stopPeer() // the peer takes over now; our live sessions get the grace
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				log.Warn("grace period over, closed remaining sessions")
			}
			log.Info("stopped")
			return nil
		}
	}
}

func (r *reloader) config() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// newPeer builds the active/standby node when [peer] is set, switching
// srv's listeners with its role and sharing the admin state with the
// peer; nil without [peer].
func newPeer(srv *proxy.Server, sync *proxy.AdminSync, cfg *config.Config, log *slog.Logger) (*peer.Node, error) {
	if cfg.Peer == nil {
		return nil, nil
	}
	node, err := peer.New(cfg.Peer, peer.Options{Logger: log, Service: srv, Shared: sync.Payload, OnShared: sync.Receive})
	if err != nil {
		return nil, err
	}
	sync.SetShare(node.Share)
	if err := srv.RegisterMetrics(node.Collector()); err != nil {
		return nil, err
	}
	return node, nil
}
