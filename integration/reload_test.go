package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/demo"
	"mailproxy/internal/testkit"
	"mailproxy/proxy"
	"mailproxy/proxy/config"
	mtls "mailproxy/tls"
)

// reloadConfig is the config of TestReload: [tls] files in dir, an
// implicit-TLS IMAP listener, pool "main" with the backends given as
// name=address=weight, pins, and extra text (a second listener).
func reloadConfig(dir, level string, backends []string, pins, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[log]\nlevel = %q\n[admin]\nlisten = \"\"\n[limits]\nauth_failure_delay = \"0s\"\n", level)
	fmt.Fprintf(&b, "[tls]\ncert = %q\nkey = %q\n", filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	b.WriteString("[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\ntls = \"implicit\"\npool = \"main\"\n")
	b.WriteString(extra)
	fmt.Fprintf(&b, "[[pool]]\nname = \"main\"\npins = {%s}\n[pool.health]\ninterval = \"50ms\"\n", pins)
	for _, spec := range backends {
		f := strings.Split(spec, "=")
		fmt.Fprintf(&b, "[[pool.backend]]\nname = %q\nimap = %q\nweight = %s\n", f[0], f[1], f[2])
	}
	return b.String()
}

// TestReload: with 50 IMAP sessions live, a reload adds a backend, changes
// another's weight, adds a pin and a listener, lowers the log level and
// replaces the certificate. No session is closed, users with live sessions
// stay where they are, new sessions follow the new config and new TLS
// handshakes present the new certificate. An invalid config is then
// refused and the old one stays in force.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := mtls.WriteSelfSigned(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	oldCert := readLeaf(t, dir)
	tracker := demo.NewTracker()
	const nUsers = 50
	us := users(nUsers+60, "u")
	us["pinned"] = "pw"
	addrs := map[string]string{}
	for _, name := range []string{"mail1", "mail2", "mail3"} {
		b := demo.NewIMAPServer(name, us, nil)
		b.Tracker = tracker
		addrs[name] = testkit.Serve(t, b)
	}
	backends := func(names ...string) []string {
		var out []string
		for _, n := range names {
			name, w, _ := strings.Cut(n, ":")
			out = append(out, name+"="+addrs[name]+"="+w)
		}
		return out
	}
	cfg1 := mustParse(t, reloadConfig(dir, "debug", backends("mail1:1", "mail2:1"), "", ""))
	logs := &testkit.SyncBuffer{}
	level := new(slog.LevelVar)
	srv, err := proxy.New(cfg1, proxy.Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})), Level: level, Handlers: handlers(), Listen: anyPort})
	if err != nil {
		t.Fatal(err)
	}
	srv.StartBackground()
	served := make(chan error, 1)
	if err := srv.OpenListeners(); err != nil {
		t.Fatal(err)
	}
	go func() { served <- srv.ListenAndServe() }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("ListenAndServe: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	if level.Level() != slog.LevelDebug {
		t.Fatalf("level %v after New, want debug", level.Level())
	}
	imaps := listenerAddr(t, srv, "imaps")
	roots := certPool(t, dir)

	// 50 live sessions over TLS, spread over mail1 and mail2.
	clients := make([]*imapclient.Client, nUsers)
	for i := range clients {
		c, err := imapclient.DialTLS(imaps, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Login(fmt.Sprintf("u%d", i), "pw").Wait(); err != nil {
			t.Fatalf("login u%d: %v", i, err)
		}
		clients[i] = c
	}
	before := map[string]string{} // user -> backend
	onMail2 := 0
	for i := range nUsers {
		u := fmt.Sprintf("u%d", i)
		before[u] = only(t, tracker, u)
		if before[u] == "mail2" {
			onMail2++
		}
	}
	if onMail2 == 0 || onMail2 == nUsers {
		t.Fatalf("%d of %d users on mail2: the test needs both backends used", onMail2, nUsers)
	}

	// The new config: mail3 added, mail2's weight 0 (only its live users
	// come back), a pin to mail3, a plain listener, level warn, a new
	// certificate in the same files.
	if _, _, err := mtls.WriteSelfSigned(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	newCert := readLeaf(t, dir)
	extra := "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:2\"\npool = \"main\"\n"
	cfg2 := mustParse(t, reloadConfig(dir, "warn", backends("mail1:1", "mail2:0", "mail3:1"), `"pinned" = "mail3"`, extra))
	if err := srv.Reload(cfg2); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	mark := len(logs.String())
	if level.Level() != slog.LevelWarn {
		t.Errorf("log level %v after the reload, want warn", level.Level())
	}

	// Every live session is still there and works.
	noop := func() {
		t.Helper()
		for i, c := range clients {
			if err := c.Noop().Wait(); err != nil {
				t.Fatalf("session of u%d after the reload: %v", i, err)
			}
		}
	}
	noop()
	// A new TLS handshake presents the new certificate.
	if got := presented(t, imaps); !bytes.Equal(got, newCert) {
		t.Error("a new TLS handshake after the reload presented the old certificate")
	}
	// New sessions follow the new config; users with live sessions stay.
	plain := listenerAddr(t, srv, "imap")
	for i := 0; i < nUsers; i += 5 {
		u := fmt.Sprintf("u%d", i)
		c := mustLoginAt(t, plain, u)
		if got := tracker.Sessions(u); got[before[u]] != 2 || len(got) != 1 {
			t.Errorf("%s, live on %s, got a second session at %v", u, before[u], got)
		}
		c.Logout().Wait()
	}
	c := mustLoginAt(t, plain, "pinned")
	if got := only(t, tracker, "pinned"); got != "mail3" {
		t.Errorf("the new pin sent the user to %s, not mail3", got)
	}
	c.Logout().Wait()
	newOn := map[string]int{}
	for i := nUsers; i < nUsers+60; i++ {
		u := fmt.Sprintf("u%d", i)
		c := mustLoginAt(t, plain, u)
		newOn[only(t, tracker, u)]++
		c.Logout().Wait()
	}
	if newOn["mail2"] != 0 || newOn["mail3"] == 0 || newOn["mail1"] == 0 {
		t.Errorf("new users went %v: want none on mail2 (weight 0), some on mail1 and the new mail3", newOn)
	}
	if !strings.Contains(logs.String()[:mark], "level=INFO") {
		t.Error("nothing was logged at info before the reload; the level check below proves nothing")
	}
	if after := logs.String()[mark:]; strings.Contains(after, "level=INFO") || strings.Contains(after, "level=DEBUG") {
		t.Errorf("info or debug lines logged after the level went to warn:\n%s", after)
	}

	// An invalid config: a certificate file that is not one, and the
	// listener's port taken. Refused whole; the old config stays.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := strings.Replace(reloadConfig(dir, "debug", backends("mail1:1"), "", extra), `name = "imap"
protocol = "imap"
address = "127.0.0.1:2"`, fmt.Sprintf("name = \"imap2\"\nprotocol = \"imap\"\naddress = %q", taken.Addr().String()), 1)
	badCfg := mustParse(t, bad)
	if err := srv.Reload(badCfg); err == nil || !errors.Is(err, proxy.ErrReloadRefused) || !strings.Contains(err.Error(), "imap2") {
		t.Errorf("a config whose listener cannot open was not refused: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(mustParse(t, reloadConfig(dir, "debug", backends("mail1:1"), "", ""))); err == nil {
		t.Error("a config with a broken certificate file was not refused")
	}
	if srv.Config() != cfg2 || level.Level() != slog.LevelWarn {
		t.Error("a refused reload changed the config in force")
	}
	if got := presented(t, imaps); !bytes.Equal(got, newCert) || bytes.Equal(got, oldCert) {
		t.Error("after a refused reload the certificate in force changed")
	}
	if len(srv.Pool("main").Backends()) != 3 {
		t.Error("a refused reload changed the backends")
	}
	mustLoginAt(t, plain, "u1").Logout().Wait() // the added listener still serves
	noop()
	if s := tracker.Splits(); len(s) > 0 {
		t.Errorf("users split over two backends: %q", s)
	}
}

// anyPort listens on a free port for the dummy addresses the configs
// write (ports below 100), and on the address itself otherwise.
func anyPort(network, addr string) (net.Listener, error) {
	if _, port, _ := net.SplitHostPort(addr); len(port) < 3 {
		addr = "127.0.0.1:0"
	}
	return net.Listen(network, addr)
}

func mustParse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(text), t.Name())
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	return cfg
}

// listenerAddr is the bound address of a serving listener.
func listenerAddr(t *testing.T, srv *proxy.Server, name string) string {
	t.Helper()
	for _, l := range srv.Listeners() {
		if l.Name == name && l.Serving {
			return l.Address
		}
	}
	t.Fatalf("listener %s is not serving: %+v", name, srv.Listeners())
	return ""
}

// only is the one backend where user has sessions now.
func only(t *testing.T, tr *demo.Tracker, user string) string {
	t.Helper()
	var where []string
	for b, n := range tr.Sessions(user) {
		if n > 0 {
			where = append(where, b)
		}
	}
	if len(where) != 1 {
		t.Fatalf("user %s has sessions on %v, want one backend", user, where)
	}
	return where[0]
}

func mustLoginAt(t *testing.T, addr, user string) *imapclient.Client {
	t.Helper()
	c, err := loginIMAP(addr, user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func certPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in cert.pem")
	}
	return p
}

func readLeaf(t *testing.T, dir string) []byte {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return c.Certificate[0]
}

// presented is the leaf certificate a new handshake with addr shows.
func presented(t *testing.T, addr string) []byte {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

// TestReloadRemoves: a reload that removes a listener closes it while its
// live session goes on; one that removes a backend keeps its users' live
// sessions and sends their new sessions there too (no split) until an
// operator kicks them; a drain made at runtime survives.
func TestReloadRemoves(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := mtls.WriteSelfSigned(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	tracker := demo.NewTracker()
	us := users(40, "u")
	addrs := map[string]string{}
	for _, name := range []string{"mail1", "mail2", "mail3"} {
		b := demo.NewIMAPServer(name, us, nil)
		b.Tracker = tracker
		addrs[name] = testkit.Serve(t, b)
	}
	bk := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, n+"="+addrs[n]+"=1")
		}
		return out
	}
	extra := "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:2\"\npool = \"main\"\n"
	srv, err := proxy.New(mustParse(t, reloadConfig(dir, "info", bk("mail1", "mail2", "mail3"), "", extra)),
		proxy.Options{Logger: slog.New(slog.DiscardHandler), Handlers: handlers(), Listen: anyPort})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.OpenListeners(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	plain := listenerAddr(t, srv, "imap")
	// A user live on mail3, through the listener about to go.
	var victim string
	var held *imapclient.Client
	for i := range 40 {
		u := fmt.Sprintf("u%d", i)
		c := mustLoginAt(t, plain, u)
		if only(t, tracker, u) == "mail3" {
			victim, held = u, c
			break
		}
		c.Logout().Wait()
	}
	if victim == "" {
		t.Fatal("no user hashed to mail3")
	}
	pool := srv.Pool("main")
	if err := srv.SetDraining(t.Context(), "main", "mail1", true); err != nil {
		t.Fatal(err)
	}

	// Remove the plain listener and mail3.
	if err := srv.Reload(mustParse(t, reloadConfig(dir, "info", bk("mail1", "mail2"), "", ""))); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", plain, time.Second); err == nil {
		c.Close()
		t.Error("the removed listener still accepts")
	}
	if err := held.Noop().Wait(); err != nil {
		t.Fatalf("the session on the removed listener and backend ended: %v", err)
	}
	st := map[string]bool{}
	for _, b := range pool.Status() {
		st[b.Name] = b.Draining
		if b.Name == "mail3" && !b.Removed {
			t.Errorf("mail3 not reported removed: %+v", b)
		}
	}
	if !st["mail1"] {
		t.Error("the runtime drain of mail1 did not survive the reload")
	}
	// The victim's new session goes to mail3, where the live one is.
	tlsCfg := &tls.Config{RootCAs: certPool(t, dir), ServerName: "127.0.0.1"}
	c2, err := imapclient.DialTLS(listenerAddr(t, srv, "imaps"), &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Login(victim, "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	if got := tracker.Sessions(victim); got["mail3"] != 2 {
		t.Errorf("%s, live on removed mail3, got its new session at %v", victim, got)
	}
	// Only a kick ends them; then the user goes to a configured backend.
	if n := pool.Kick(pool.Backend("mail3")); n != 2 {
		t.Errorf("kick of mail3 ended %d sessions, want 2", n)
	}
	waitFor(t, 5*time.Second, "the kicked sessions to end", func() bool { return tracker.Sessions(victim)["mail3"] == 0 })
	c3, err := imapclient.DialTLS(listenerAddr(t, srv, "imaps"), &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := c3.Login(victim, "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	if got := only(t, tracker, victim); got != "mail2" {
		t.Errorf("after the kick %s went to %s, want mail2 (mail1 drains, mail3 is gone)", victim, got)
	}
}

// TestReloadChurn: IMAP sessions open and close without pause while the
// config is reloaded again and again, each time with other weights, pins
// and backends; no user ever has sessions on two backends at once.
func TestReloadChurn(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := mtls.WriteSelfSigned(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	tracker := demo.NewTracker()
	us := users(12, "u")
	addrs := map[string]string{}
	for _, name := range []string{"mail1", "mail2", "mail3"} {
		b := demo.NewIMAPServer(name, us, nil)
		b.Tracker = tracker
		addrs[name] = testkit.Serve(t, b)
	}
	extra := "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:2\"\npool = \"main\"\n"
	configs := []string{
		reloadConfig(dir, "info", []string{"mail1=" + addrs["mail1"] + "=1", "mail2=" + addrs["mail2"] + "=1", "mail3=" + addrs["mail3"] + "=1"}, "", extra),
		reloadConfig(dir, "info", []string{"mail1=" + addrs["mail1"] + "=0", "mail2=" + addrs["mail2"] + "=3"}, `"u1" = "mail1", "u2" = "mail2"`, extra),
		reloadConfig(dir, "info", []string{"mail3=" + addrs["mail3"] + "=1", "mail1=" + addrs["mail1"] + "=2"}, `"u1" = "mail3"`, extra),
	}
	srv, err := proxy.New(mustParse(t, configs[0]), proxy.Options{Logger: slog.New(slog.DiscardHandler), Handlers: handlers(), Listen: anyPort})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.OpenListeners(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	addr := listenerAddr(t, srv, "imap")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var logins atomic.Int64
	errs := make(chan error, 8)
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := loginIMAP(addr, fmt.Sprintf("u%d", (w*7+i)%12))
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				logins.Add(1)
				c.Noop().Wait()
				c.Close()
			}
		})
	}
	for i := range 30 {
		if err := srv.Reload(mustParse(t, configs[(i+1)%len(configs)])); err != nil {
			t.Errorf("reload %d: %v", i, err)
		}
		n := logins.Load()
		waitFor(t, 5*time.Second, "logins between reloads", func() bool { return logins.Load() > n+3 || len(errs) > 0 })
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a login failed during the reloads: %v", err)
	}
	if s := tracker.Splits(); len(s) > 0 {
		t.Errorf("users split over two backends: %q", s)
	}
	t.Logf("%d logins over 30 reloads", logins.Load())
}

// TestReloadKeepsPenalty: a reload that leaves [auth.penalty] as it was
// keeps the failures counted so far (a brute-forcer gains nothing from a
// reload); one that changes it starts afresh with the new limits.
func TestReloadKeepsPenalty(t *testing.T) {
	users := map[string]string{"alice": "right"}
	_, imapAddr := imapBackend(t, "mail1", users, nil)
	w := &waits{}
	backs := authHTTPBackends(t)
	e := startProxy(t, penaltyConfig(imapAddr, backs[0][2], backs[0][3]), func(o *proxy.Options) { o.LoginWait = w.wait })
	try := func(want string) {
		t.Helper()
		s := dialScript(t, e.Addr["imap"])
		s.expect("* OK")
		s.send("a LOGIN alice wrong\r\n")
		s.expect("a " + want)
	}
	for range 10 {
		try("NO [AUTHENTICATIONFAILED]")
	}
	try("NO [UNAVAILABLE] Too many failed logins")
	if err := e.Srv.Reload(e.Cfg); err != nil {
		t.Fatal(err)
	}
	try("NO [UNAVAILABLE] Too many failed logins")
	changed := mustParse(t, "[auth.penalty]\nip_user_limit = 20\n"+penaltyConfig(imapAddr, backs[0][2], backs[0][3]))
	if err := e.Srv.Reload(changed); err != nil {
		t.Fatal(err)
	}
	try("NO [AUTHENTICATIONFAILED]")
	w.take()
}
