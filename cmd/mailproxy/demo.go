package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	goimap "github.com/emersion/go-imap/v2"

	"mailproxy/demo"
	"mailproxy/proxy"
)

// demoUsers are the accounts of the demo backends.
var demoUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}

const demoConfig = `
[log]
level = %q

[admin]
listen = ""

[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = %q
pool = "demo"

[[pool]]
name = "demo"
%s
`

// cmdDemo starts two in-memory IMAP backends and mailproxy in front of them
// on loopback, and prints how to try it.
func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	imapAddr := fs.String("imap", "127.0.0.1:10143", "address of the demo IMAP listener")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var backends []string
	for _, name := range []string{"mail1", "mail2"} {
		addr, err := startDemoIMAP(name)
		if err != nil {
			return err
		}
		backends = append(backends, fmt.Sprintf("[[pool.backend]]\nname = %q\nimap = %q\n", name, addr))
	}
	text := fmt.Sprintf(demoConfig, *level, *imapAddr, strings.Join(backends, "\n"))
	cfg, err := proxy.ParseConfig([]byte(text), "demo")
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Handlers: handlers()})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `mailproxy demo: IMAP on %[1]s in front of two in-memory backends.
Users: alice / alice-pw, bob / bob-pw, carol / carol-pw (each has one message).
Try:
  curl --user alice:alice-pw 'imap://%[1]s/INBOX;UID=1'
  curl --user bob:bob-pw imap://%[1]s/
Stop with Ctrl-C.
`, *imapAddr)
	return serve(srv, cfg, log)
}

// startDemoIMAP starts one in-memory backend with the demo users on a free
// loopback port and returns its address.
func startDemoIMAP(name string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	b := demo.NewIMAPServer(name, nil, nil)
	for u, pw := range demoUsers {
		user := b.AddUser(u, pw)
		msg := fmt.Sprintf("From: demo@example.org\r\nTo: %s@example.org\r\nSubject: Welcome to mailproxy\r\n\r\nHello %s, this message lives on backend %s.\r\n", u, u, name)
		user.Append("INBOX", strings.NewReader(msg), &goimap.AppendOptions{})
	}
	go b.Serve(ln)
	return ln.Addr().String(), nil
}
