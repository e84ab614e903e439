package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"strings"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"mailproxy/internal/demo"
	"mailproxy/proxy"
)

// demoUsers are the accounts of the demo backends.
var demoUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}

const demoConfig = `
[log]
level = %q

[admin]
listen = %q

[limits]
auth_failure_delay = "0s"

[[listener]]
name = "imap"
protocol = "imap"
address = %q
pool = "demo"

[[listener]]
name = "pop3"
protocol = "pop3"
address = %q
pool = "demo"

[[listener]]
name = "smtp"
protocol = "smtp"
address = %q
smtp_auth = "optional"
pool = "demo"

[[pool]]
name = "demo"
%s
`

// demoSite is two mail servers sharing one mail store, as two IMAP servers
// share one Maildir over NFS: one in-memory IMAP store behind both IMAP
// backends, and SMTP backends that deliver into it (and into the POP3
// backends' mailboxes).
type demoSite struct {
	store *imapmemserver.Server
	users map[string]*imapmemserver.User
	pop3  []*demo.POP3Server
}

// cmdDemo starts two in-memory backends and mailproxy in front of them on
// loopback, and prints how to try it.
func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	o := demoFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	imapAddr, pop3Addr, smtpAddr, adminAddr, level := o.imap, o.pop3, o.smtp, o.admin, o.level
	site := &demoSite{store: imapmemserver.New(), users: map[string]*imapmemserver.User{}}
	for u, pw := range demoUsers {
		user := imapmemserver.NewUser(u, pw)
		user.Create("INBOX", nil)
		site.store.AddUser(user)
		site.users[u] = user
	}
	var backends []string
	for _, name := range []string{"mail1", "mail2"} {
		b, err := site.start(name)
		if err != nil {
			return err
		}
		backends = append(backends, b)
	}
	site.deliver("demo@example.org", []string{"alice", "bob", "carol"}, "Welcome to mailproxy",
		"This message lives in the store both demo backends share.")
	text := fmt.Sprintf(demoConfig, *level, *adminAddr, *imapAddr, *pop3Addr, *smtpAddr, strings.Join(backends, "\n"))
	cfg, err := config.Parse([]byte(text), "demo")
	if err != nil {
		return err
	}
	lv := new(slog.LevelVar)
	log := newLogger(cfg.Log, lv, stderr)
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Level: lv, Handlers: handlers()})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `mailproxy demo: IMAP on %[1]s, POP3 on %[2]s, SMTP on %[3]s,
in front of two in-memory mail servers that share one mail store.
Users: alice / alice-pw, bob / bob-pw, carol / carol-pw (each has one message).
Try:
  curl --user alice:alice-pw 'imap://%[1]s/INBOX;UID=1'
  curl --user bob:bob-pw pop3://%[2]s/1
  printf 'Subject: hi\r\n\r\nhello\r\n' | curl -s smtp://%[3]s --mail-from me@example.org --mail-rcpt carol@example.org -T -
  curl --user carol:carol-pw 'imap://%[1]s/INBOX;UID=2'
`, *imapAddr, *pop3Addr, *smtpAddr)
	if *adminAddr != "" {
		fmt.Fprintf(stdout, "  go run ./cmd/mailproxy ctl -admin %s status\n", *adminAddr)
	}
	fmt.Fprintln(stdout, "Stop with Ctrl-C.")
	return serve(srv, cfg, log, nil)
}

// demoOptions are the flags of demo.
type demoOptions struct{ imap, pop3, smtp, admin, level *string }

func demoFlags(fs *flag.FlagSet) demoOptions {
	return demoOptions{
		imap:  fs.String("imap", "127.0.0.1:10143", "address of the demo IMAP listener"),
		pop3:  fs.String("pop3", "127.0.0.1:10110", "address of the demo POP3 listener"),
		smtp:  fs.String("smtp", "127.0.0.1:10025", "address of the demo SMTP listener"),
		admin: fs.String("admin", "127.0.0.1:10080", "address of the admin API (empty: off)"),
		level: fs.String("log-level", "info", "log level"),
	}
}

// start runs one demo mail server (IMAP, POP3, SMTP) on free loopback
// ports and returns its [[pool.backend]] section.
func (d *demoSite) start(name string) (string, error) {
	imap := demo.NewIMAPServer(name, nil, nil)
	imap.Mem = d.store // the shared store
	pop3 := demo.NewPOP3Server(name, demoUsers, nil)
	d.pop3 = append(d.pop3, pop3)
	smtp := demo.NewSMTPServer(name, demo.SMTPOptions{Users: demoUsers, Deliver: func(m demo.SMTPMessage) {
		var to []string
		for _, r := range m.Rcpts {
			to = append(to, r.To)
		}
		d.deliverRaw(to, string(m.Data))
	}})
	addrs := make([]string, 3)
	for i, srv := range []interface{ Serve(net.Listener) error }{imap, pop3, smtp} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addrs[i] = ln.Addr().String()
		go srv.Serve(ln)
	}
	return fmt.Sprintf("[[pool.backend]]\nname = %q\nimap = %q\npop3 = %q\nsmtp = %q\n", name, addrs[0], addrs[1], addrs[2]), nil
}

func (d *demoSite) deliver(from string, to []string, subject, body string) {
	msg := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n%s\r\n", from, strings.Join(to, ", "), subject, body)
	d.deliverRaw(to, msg)
}

// deliverRaw puts msg into the mailboxes of the recipients it knows.
func (d *demoSite) deliverRaw(to []string, msg string) {
	for _, rcpt := range to {
		local, _, _ := strings.Cut(rcpt, "@")
		u := d.users[strings.ToLower(local)]
		if u == nil {
			continue
		}
		u.Append("INBOX", strings.NewReader(msg), &goimap.AppendOptions{})
		for _, p := range d.pop3 {
			p.Add(strings.ToLower(local), msg)
		}
	}
}
