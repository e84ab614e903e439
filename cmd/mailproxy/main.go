// Command mailproxy is a protocol-aware front end for IMAP, POP3 and SMTP
// servers. It keeps every IMAP session of a user on one backend.
//
// Usage (`mailproxy help` lists every command with its flags):
//
//	mailproxy [run] -config FILE   serve (the default command)
//	mailproxy check -config FILE   validate a config, print its warnings, and exit
//	mailproxy ctl COMMAND          call the admin API: status, drain, undrain, kick, weight, pin, move, user, reload
//	mailproxy demo                 run against built-in in-memory backends
//	mailproxy version              the module version and VCS revision
//	mailproxy help [COMMAND]       the commands, or one command's flags
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"mailproxy/protocols"
	"mailproxy/protocols/imap"
	"mailproxy/protocols/lmtp"
	"mailproxy/protocols/managesieve"
	"mailproxy/protocols/pop3"
	"mailproxy/protocols/smtp"
	"mailproxy/proxy/auth"
	"mailproxy/proxy/config"
)

// version is set at build time with -ldflags "-X main.version=..."; when it
// is not, the module version from the build info is shown.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one subcommand: its flags are declared by flags, so that help
// lists exactly what the command parses.
type command struct {
	name, args, summary string
	flags               func(fs *flag.FlagSet) // nil: no flags
}

// commands lists every subcommand, in the order help shows them.
func commands() []command {
	return []command{
		{"run", "[-config FILE]", "serve until SIGTERM or SIGINT; SIGHUP reloads the config (the default command)", func(fs *flag.FlagSet) { configFlag(fs) }},
		{"check", "[-config FILE]", "load and validate a config file, print its warnings, and exit", func(fs *flag.FlagSet) { configFlag(fs) }},
		{"ctl", "[flags] COMMAND [ARGS]", "call the admin API of a running mailproxy (mailproxy help ctl lists its commands)", func(fs *flag.FlagSet) { ctlFlags(fs) }},
		{"demo", "[flags]", "run in front of built-in in-memory mail servers, to try mailproxy out", func(fs *flag.FlagSet) { demoFlags(fs) }},
		{"version", "", "print the module version and VCS revision", nil},
		{"help", "[COMMAND]", "list the commands, or one command's flags", nil},
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && slices.Contains([]string{"-h", "-help", "--help"}, args[0]) {
		usage(stdout)
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
		err = cmdCheck(args, stdout, stderr)
	case "demo":
		err = cmdDemo(args, stdout, stderr)
	case "ctl":
		err = cmdCtl(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, versionLine())
	case "help":
		err = cmdHelp(args, stdout)
	default:
		fmt.Fprintf(stderr, "mailproxy: unknown command %q\n\n", cmd)
		usage(stderr)
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

// usage lists the commands.
func usage(w io.Writer) {
	fmt.Fprint(w, "usage:\n")
	for _, c := range commands() {
		name := c.name
		if name == "run" {
			name = "[run]" // the default
		}
		fmt.Fprintf(w, "  mailproxy %-30s %s\n", name+" "+c.args, c.summary)
	}
	fmt.Fprint(w, "\nmailproxy help COMMAND shows a command's flags.\n")
}

// cmdHelp is `mailproxy help [COMMAND]`.
func cmdHelp(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		usage(stdout)
		for _, c := range commands() {
			if c.flags != nil {
				fmt.Fprintln(stdout)
				commandHelp(stdout, c)
			}
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			commandHelp(stdout, c)
			return nil
		}
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func commandHelp(w io.Writer, c command) {
	fmt.Fprintf(w, "mailproxy %s %s\n  %s\n", c.name, c.args, c.summary)
	if c.flags != nil {
		fs := newFlagSet(c.name, w)
		c.flags(fs)
		fmt.Fprintln(w, "flags:")
		fs.PrintDefaults()
	}
	if c.name == "ctl" {
		fmt.Fprint(w, ctlCommands())
	}
}

// newFlagSet makes a command's flag set whose -h prints its help.
func newFlagSet(name string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	return fs
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", defaultConfig, "config file")
}

// parseConfigFlag parses the flags of run and check.
func parseConfigFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := newFlagSet(name, stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	return *path, nil
}

// cmdCheck loads and validates a config without building any part of the
// server: only the config package and the users file parser run.
func cmdCheck(args []string, stdout, stderr io.Writer) error {
	path, err := parseConfigFlag("check", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if err := checkUsersFile(cfg.Auth); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%d listeners, %d pools)\n", path, len(cfg.Listeners), len(cfg.Pools))
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stdout, "%s: warning: %s\n", path, w)
	}
	return nil
}

// checkUsersFile checks the users file of auth.mode = "verify" when it
// exists: its syntax, schemes and duplicate users. A file that is not there
// is no error, so that a config can be checked away from the machine it
// runs on; `run` needs it.
func checkUsersFile(a config.AuthConfig) error {
	if a.Mode != "verify" || a.UsersFile == "" {
		return nil
	}
	if _, err := os.Stat(a.UsersFile); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := auth.LoadUsers(a.UsersFile, a.RoutingKey); err != nil {
		return fmt.Errorf("auth.users_file: %w", err)
	}
	return nil
}

// handlers wires the protocol implementations into the proxy.
func handlers() map[string]protocols.Handler {
	return map[string]protocols.Handler{"imap": imap.Handler{}, "pop3": pop3.Handler{}, "smtp": smtp.Handler{},
		"lmtp": lmtp.Handler{}, "managesieve": &managesieve.Handler{}}
}

// newLogger makes the logger of [log]; its level is level's, which a
// reload changes.
func newLogger(cfg config.LogConfig, level *slog.LevelVar, w io.Writer) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(cfg.Level))
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
