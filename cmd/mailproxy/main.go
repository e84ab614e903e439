// Command mailproxy is a protocol-aware front end for IMAP, POP3 and SMTP
// servers. It keeps every IMAP session of a user on one backend.
//
// Usage:
//
//	mailproxy [run] -config FILE   serve (the default subcommand)
//	mailproxy check -config FILE   validate a config, print its warnings, and exit
//	mailproxy ctl COMMAND          call the admin API: status, drain, undrain, kick, weight, pin, move, user
//	mailproxy demo                 run against built-in in-memory backends
//	mailproxy version
//	mailproxy help                 list the subcommands
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/protocols/lmtp"
	"mailproxy/protocols/managesieve"
	"mailproxy/protocols/pop3"
	"mailproxy/protocols/smtp"
	"mailproxy/proxy"
	"mailproxy/proxy/admin"
	"mailproxy/proxy/peer"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usage lists the subcommands, for `mailproxy help`.
const usage = `Usage:
  mailproxy [run] -config FILE   serve (the default subcommand)
  mailproxy check -config FILE   validate a config, print its warnings, and exit
  mailproxy ctl COMMAND          call the admin API: status, drain, undrain, kick, user
  mailproxy demo                 run against built-in in-memory backends
  mailproxy version              print the version
  mailproxy help                 print this list

Each subcommand takes -h for its own flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && slices.Contains([]string{"help", "-h", "-help", "--help"}, args[0]) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = cmdRun(args, stderr)
	case "check":
		err = cmdCheck(args, stdout)
	case "demo":
		err = cmdDemo(args, stdout, stderr)
	case "ctl":
		err = cmdCtl(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "mailproxy", version)
	default:
		fmt.Fprintf(stderr, "mailproxy: unknown command %q (want run, check, ctl, demo, version or help)\n", cmd)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailproxy %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/mailproxy/mailproxy.toml", "config file")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	return *path, nil
}

func cmdCheck(args []string, stdout io.Writer) error {
	path, err := configFlag("check", args, stdout)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if err := proxy.CheckAuthFiles(cfg); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%d listeners, %d pools)\n", path, len(cfg.Listeners), len(cfg.Pools))
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stdout, "%s: warning: %s\n", path, w)
	}
	for _, u := range cfg.Unbuilt() {
		fmt.Fprintf(stdout, "%s: note: %s\n", path, u)
	}
	return nil
}

// handlers wires the protocol implementations into the proxy.
func handlers() map[string]protocols.Handler {
	return map[string]protocols.Handler{"imap": imap.Handler{}, "pop3": pop3.Handler{}, "smtp": smtp.Handler{},
		"lmtp": lmtp.Handler{}, "managesieve": &managesieve.Handler{}}
}

func newLogger(cfg config.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// The server is what the pair switches; admin reads it.
var (
	_ peer.Service = (*proxy.Server)(nil)
	_ admin.Server = (*proxy.Server)(nil)
)

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

func cmdRun(args []string, stderr io.Writer) error {
	path, err := configFlag("run", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if unbuilt := cfg.Unbuilt(); len(unbuilt) > 0 {
		return fmt.Errorf("%s uses features this version does not have yet:\n  %s", path, strings.Join(unbuilt, "\n  "))
	}
	for _, l := range cfg.Listeners {
		if handlers()[l.Protocol] == nil {
			return fmt.Errorf("listener %s: protocol %s is not built yet", l.Name, l.Protocol)
		}
	}
	log := newLogger(cfg.Log, stderr)
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Handlers: handlers()})
	if err != nil {
		return err
	}
	return serve(srv, cfg, log)
}

// serve runs srv until SIGTERM or SIGINT, then shuts down gracefully.
// SIGHUP reloads the TLS certificate and, with auth.mode = "verify", the
// users file and master password. With [peer], the pair's node opens
// and closes the listeners with its role instead of ListenAndServe.
func serve(srv *proxy.Server, cfg *config.Config, log *slog.Logger) error {
	sync := srv.NewAdminSync()
	node, err := newPeer(srv, sync, cfg, log)
	if err != nil {
		return err
	}
	srv.StartBackground()
	stopAdmin, err := startAdmin(srv, node, sync, cfg, log)
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
		go func() { errc <- srv.ListenAndServe() }()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-errc:
			srv.Close()
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if err := srv.ReloadCertificates(); err != nil {
					log.Error("certificate reload failed", "err", err)
				} else {
					log.Info("certificate reloaded")
				}
				if err := srv.ReloadAuth(); err != nil {
					log.Error("users reload failed, the users loaded before stay in use", "err", err)
				}
				continue
			}
			grace := cfg.Limits.ShutdownGrace.Duration
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
