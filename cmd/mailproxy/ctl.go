package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"mailproxy/proxy/config"
	"net"
	"time"

	"mailproxy/proxy/admin"
)

const (
	defaultConfig    = "/etc/mailproxy/mailproxy.toml"
	defaultAdminAddr = "127.0.0.1:9025"
)

// cmdCtl is `mailproxy ctl`: one call to the admin API of a running
// mailproxy. -admin and -token-file default to [admin] listen and
// token_file of the config file, when there is one.
func cmdCtl(args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("ctl", stderr)
	fset.Usage = func() {
		fmt.Fprint(stderr, "usage: mailproxy ctl [flags] COMMAND [ARGS]\n\n"+admin.CtlUsage+"\nflags:\n")
		fset.PrintDefaults()
	}
	o := ctlFlags(fset)
	cfgPath, addr, tokenFile, timeout := o.config, o.admin, o.tokenFile, o.timeout
	if err := fset.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fset.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c, err := ctlClient(*cfgPath, set["config"], *addr, *tokenFile, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	err = admin.Ctl(ctx, c, fset.Args(), stdout)
	if errors.Is(err, admin.ErrUsage) {
		fmt.Fprintf(stderr, "mailproxy ctl: %v\n", err)
		fset.Usage()
		return flag.ErrHelp
	}
	return err
}

// ctlOptions are the flags of ctl.
type ctlOptions struct {
	config, admin, tokenFile *string
	timeout                  *time.Duration
}

func ctlFlags(fs *flag.FlagSet) ctlOptions {
	return ctlOptions{
		config:    fs.String("config", defaultConfig, "config file to take the defaults of -admin and -token-file from"),
		admin:     fs.String("admin", "", "admin API host:port (default [admin] listen, else "+defaultAdminAddr+")"),
		tokenFile: fs.String("token-file", "", "file with the bearer token for drain, undrain, kick and reload (default [admin] token_file)"),
		timeout:   fs.Duration("timeout", 10*time.Second, "give up after this long"),
	}
}

// ctlCommands is the list of ctl's commands for help.
func ctlCommands() string { return admin.CtlUsage }

// ctlClient finds the admin API and its token: the flags first, then the
// config file. A missing default config file is not an error (ctl may run
// on another machine); one named with -config must load.
func ctlClient(cfgPath string, cfgSet bool, addr, tokenFile string, stderr io.Writer) (*admin.Client, error) {
	if addr == "" || tokenFile == "" {
		cfg, err := config.Load(cfgPath)
		switch {
		case err == nil:
			if addr == "" {
				if cfg.Admin.Listen == "" {
					return nil, fmt.Errorf(`%s turns the admin API off ([admin] listen = ""); pass -admin`, cfgPath)
				}
				addr = dialable(cfg.Admin.Listen)
			}
			if tokenFile == "" {
				tokenFile = cfg.Admin.TokenFile
			}
		case cfgSet:
			return nil, err
		case !errors.Is(err, fs.ErrNotExist):
			fmt.Fprintf(stderr, "mailproxy ctl: note: %v; using the defaults\n", err)
		}
	}
	if addr == "" {
		addr = defaultAdminAddr
	}
	c := &admin.Client{Addr: addr}
	if tokenFile != "" {
		tok, err := admin.ReadToken(tokenFile)
		if err != nil {
			return nil, err
		}
		c.Token = tok
	}
	return c, nil
}

// dialable turns a listen address into one to connect to: a wildcard
// host means this machine.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || ip != nil && ip.IsUnspecified() && ip.To4() != nil:
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
