package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"mailproxy/proxy/config"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/proxy"
	"mailproxy/proxy/admin"
)

// ctlServer runs the admin API of a proxy (built, not serving) with one
// pool "p" of backends mail1 and mail2, and returns its address.
func ctlServer(t *testing.T, token string) (addr string, srv *proxy.Server) {
	t.Helper()
	cfg, err := config.Parse([]byte(`
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "p"

[[pool]]
name = "p"

  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:2"

  [[pool.backend]]
  name = "mail2"
  imap = "127.0.0.1:3"
`), "ctl-test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err = proxy.New(cfg, proxy.Options{Handlers: handlers()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(admin.New(srv, admin.Options{Token: token, Node: "lb-test", Logger: slog.New(slog.DiscardHandler)}).Handler())
	t.Cleanup(hs.Close)
	return strings.TrimPrefix(hs.URL, "http://"), srv
}

func runCtl(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(append([]string{"ctl"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCtlStatusAndDrain(t *testing.T) {
	addr, srv := ctlServer(t, "")
	code, out, errOut := runCtl("-admin", addr, "-config", "/nonexistent/ok-when-flags-given.toml", "status")
	if code == 0 {
		t.Fatalf("a missing -config was ignored: %q", out)
	}
	if !strings.Contains(errOut, "read config") {
		t.Errorf("stderr %q", errOut)
	}

	code, out, errOut = runCtl("-admin", addr, "status")
	if code != 0 {
		t.Fatalf("ctl status: %d %s", code, errOut)
	}
	for _, want := range []string{"node lb-test, active", "imap      imap      127.0.0.1:1 (not serving)", "p     mail1    up     0         0      1       imap=up"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = runCtl("-admin", addr, "drain", "p", "mail2")
	b := srv.Pool("p").Backend("mail2")
	if code != 0 || out != "p/mail2 is draining: no new users; 0 sessions left\n" {
		t.Errorf("ctl drain: %d %q", code, out)
	}
	if st := srv.Pool("p").Status()[1]; !st.Draining || st.State != "draining" || st.Name != b.Name {
		t.Errorf("mail2 after drain: %+v", st)
	}
	code, out, _ = runCtl("-admin", addr, "undrain", "p", "mail2")
	if code != 0 || out != "p/mail2 is up: takes new users again\n" {
		t.Errorf("ctl undrain: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "kick", "p", "mail1")
	if code != 0 || out != "kicked 0 sessions on p/mail1; 0 left; it is up\n" {
		t.Errorf("ctl kick: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "weight", "p", "mail2", "3")
	if code != 0 || out != "p/mail2 has weight 3; it is up\n" {
		t.Errorf("ctl weight: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "pin", "Bob", "p", "mail2")
	if code != 0 || out != "bob pinned to mail2 in pool p\n" || srv.Pool("p").Pin("bob") != "mail2" {
		t.Errorf("ctl pin: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "pin", "bob", "p")
	if code != 0 || out != "bob unpinned in pool p\n" || srv.Pool("p").Pin("bob") != "" {
		t.Errorf("ctl pin without a backend: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "move", "bob", "p", "mail1")
	if code != 0 || out != "bob moved to mail1 in pool p; 0 sessions closed here\n" {
		t.Errorf("ctl move: %d %q", code, out)
	}
	code, out, _ = runCtl("-admin", addr, "user", "Alice")
	if code != 0 || !strings.Contains(out, "user alice") || !strings.Contains(out, "p     -         0     -    -") {
		t.Errorf("ctl user: %d %q", code, out)
	}
}

func TestCtlErrors(t *testing.T) {
	addr, _ := ctlServer(t, "")
	code, _, errOut := runCtl("-admin", addr, "drain", "p", "nope")
	if code != 1 || errOut != "mailproxy ctl: no backend \"nope\" in pool \"p\" (HTTP 404)\n" {
		t.Errorf("drain of an unknown backend: %d %q", code, errOut)
	}
	code, _, errOut = runCtl("-admin", addr, "reboot")
	if code != 2 || !strings.Contains(errOut, `unknown command "reboot"`) || !strings.Contains(errOut, "drain POOL BACKEND") {
		t.Errorf("unknown command: %d %q", code, errOut)
	}
	code, _, errOut = runCtl("-admin", addr, "kick", "p")
	if code != 2 || !strings.Contains(errOut, "kick takes 2 arguments, not 1") {
		t.Errorf("kick with one argument: %d %q", code, errOut)
	}
	code, _, errOut = runCtl("-admin", addr, "weight", "p", "mail1", "many")
	if code != 2 || !strings.Contains(errOut, `weight "many" is not a number >= 0`) {
		t.Errorf("weight not a number: %d %q", code, errOut)
	}
	code, _, errOut = runCtl("-admin", "127.0.0.1:1", "status")
	if code != 1 || !strings.Contains(errOut, "admin API") || !strings.Contains(errOut, "connection refused") {
		t.Errorf("nothing listening: %d %q", code, errOut)
	}
}

// TestCtlConfigDefaults: -admin and -token-file come from the config.
func TestCtlConfigDefaults(t *testing.T) {
	addr, srv := ctlServer(t, "tok-123")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("tok-123\n"), 0o600)
	_, port, _ := strings.Cut(addr, ":")
	cfg := filepath.Join(dir, "mailproxy.toml")
	write := func(admin string) {
		text := fmt.Sprintf("%s\n[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n  [[pool.backend]]\n  name = \"mail1\"\n  imap = \"127.0.0.1:2\"\n", admin)
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A wildcard listen address is called on loopback.
	write(fmt.Sprintf("[admin]\nlisten = \"0.0.0.0:%s\"\ntoken_file = %q\n", port, tokenFile))
	code, out, errOut := runCtl("-config", cfg, "drain", "p", "mail1")
	if code != 0 || !strings.Contains(out, "draining") {
		t.Fatalf("ctl drain with the config's address and token: %d %q %q", code, out, errOut)
	}
	if !srv.Pool("p").Status()[0].Draining {
		t.Errorf("mail1 not draining")
	}
	// Without the token the server refuses, and ctl says why.
	write(fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:%s\"\n", port))
	code, _, errOut = runCtl("-config", cfg, "undrain", "p", "mail1")
	if code != 1 || !strings.Contains(errOut, "missing or wrong bearer token (HTTP 401)") {
		t.Errorf("ctl undrain without a token: %d %q", code, errOut)
	}
	code, _, errOut = runCtl("-config", cfg, "-token-file", tokenFile, "undrain", "p", "mail1")
	if code != 0 {
		t.Errorf("ctl undrain with -token-file: %d %q", code, errOut)
	}
	write("[admin]\nlisten = \"\"\n")
	code, _, errOut = runCtl("-config", cfg, "status")
	if code != 1 || !strings.Contains(errOut, "turns the admin API off") {
		t.Errorf("admin off in the config: %d %q", code, errOut)
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:9025":   "127.0.0.1:9025",
		":9025":          "127.0.0.1:9025",
		"[::]:9025":      "[::1]:9025",
		"127.0.0.1:9025": "127.0.0.1:9025",
		"[::1]:9025":     "[::1]:9025",
		"lb1:9025":       "lb1:9025",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}
