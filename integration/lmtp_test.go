package integration

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
	"mailproxy/internal/sievefake"
	"mailproxy/internal/testkit"
	"mailproxy/proxy"
	"mailproxy/proxy/config"
	mtls "mailproxy/tls"
)

// storeBackend is one mail server of the store tests: IMAP (with a
// tracker), LMTP and ManageSieve on three ports.
type storeBackend struct {
	name  string
	imap  *demo.IMAPServer
	lmtp  *lmtpFake
	sieve *sievefake.Server
	addrs [3]string // imap, lmtp, managesieve
}

// storeBackends starts n backends mail1..mailn for users.
func storeBackends(t *testing.T, n int, users map[string]string) ([]*storeBackend, *demo.Tracker) {
	t.Helper()
	tr := demo.NewTracker()
	var out []*storeBackend
	for i := range n {
		b := &storeBackend{name: fmt.Sprintf("mail%d", i+1)}
		b.imap, b.addrs[0] = imapBackend(t, b.name, users, nil)
		b.imap.Tracker = tr
		b.lmtp, b.addrs[1] = newLMTPFake(t, b.name)
		b.sieve = &sievefake.Server{Name: b.name, Users: users, TLS: backendTLS(t)}
		b.addrs[2] = testkit.Serve(t, b.sieve)
		out = append(out, b)
	}
	return out, tr
}

// storeConfig puts an IMAP, an LMTP and a ManageSieve listener (STARTTLS
// offered, not required) in front of pool "main" of backs.
func storeConfig(extra string, backs []*storeBackend) string {
	var b strings.Builder
	b.WriteString(`
[limits]
auth_failure_delay = "0s"
max_connections_per_ip = 5000

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"

[[listener]]
name = "lmtp"
protocol = "lmtp"
address = "127.0.0.1:2"
pool = "main"

[[listener]]
name = "sieve"
protocol = "managesieve"
address = "127.0.0.1:3"
tls = "starttls"
pool = "main"

[[pool]]
name = "main"
`)
	b.WriteString(extra)
	if !strings.Contains(extra, "[pool.health]") {
		b.WriteString("  [pool.health]\n  interval = \"1h\"\n")
	}
	for _, bk := range backs {
		fmt.Fprintf(&b, "\n  [[pool.backend]]\n  name = %q\n  imap = %q\n  lmtp = %q\n  managesieve = %q\n", bk.name, bk.addrs[0], bk.addrs[1], bk.addrs[2])
	}
	return b.String()
}

// lmtpMessage sends one message through the LMTP listener with a scripted
// client, pipelining nothing, and returns the replies after the final
// dot, one per accepted recipient, in order.
func lmtpMessage(t *testing.T, e *env, rcpts []string, body string) []string {
	t.Helper()
	s := dialScript(t, e.Addr["lmtp"])
	s.expect("220 ")
	s.send("LHLO mx.test\r\n")
	for {
		if l := s.expect("250"); strings.HasPrefix(l, "250 ") {
			break
		}
	}
	s.send("MAIL FROM:<sender@example.net>\r\n")
	s.expect("250 ")
	accepted := 0
	for _, r := range rcpts {
		s.send("RCPT TO:<" + r + ">\r\n")
		if l := s.expect(""); strings.HasPrefix(l, "250 ") {
			accepted++
		} else {
			t.Logf("RCPT %s: %s", r, l)
		}
	}
	s.send("DATA\r\n")
	s.expect("354 ")
	s.send(body + "\r\n.\r\n")
	var replies []string
	for range accepted {
		replies = append(replies, s.expect(""))
	}
	s.send("QUIT\r\n")
	s.expect("221 ")
	return replies
}

func bodyOf(subject string) string {
	return "From: sender@example.net\r\nSubject: " + subject + "\r\n\r\nhello\r\n"
}

// TestLMTPPerRecipientRouting: one message to three users bound to three
// backends reaches each backend once, with only its own recipient; the
// client gets three replies in RCPT order, each the backend's own. Then
// one backend drops the connection in the middle of the message: its
// recipient gets 4xx, the others 250.
func TestLMTPPerRecipientRouting(t *testing.T) {
	users := map[string]string{"ann@example.org": "pw", "bob@example.org": "pw", "cy@example.org": "pw"}
	backs, tr := storeBackends(t, 3, users)
	pins := `pins = { "ann@example.org" = "mail1", "bob@example.org" = "mail2", "cy@example.org" = "mail3" }` + "\n"
	e := startProxy(t, storeConfig(pins, backs))

	// Each user has a live IMAP session on its own backend: the binding.
	for _, u := range []string{"ann@example.org", "bob@example.org", "cy@example.org"} {
		c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(u, "pw").Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for u, want := range map[string]string{"ann@example.org": "mail1", "bob@example.org": "mail2", "cy@example.org": "mail3"} {
		if got := tr.Sessions(u); got[want] != 1 || len(got) != 1 {
			t.Fatalf("%s has IMAP sessions %v, want one on %s", u, got, want)
		}
	}

	rcpts := []string{"bob@example.org", "ann@example.org", "cy@example.org"}
	replies := lmtpMessage(t, e, rcpts, bodyOf("one"))
	want := []string{
		"250 2.0.0 <bob@example.org> saved on mail2",
		"250 2.0.0 <ann@example.org> saved on mail1",
		"250 2.0.0 <cy@example.org> saved on mail3",
	}
	if !slices.Equal(replies, want) {
		t.Fatalf("replies\n got %q\nwant %q", replies, want)
	}
	for i, b := range backs {
		d := b.lmtp.Deliveries()
		wantRcpt := []string{"ann@example.org", "bob@example.org", "cy@example.org"}[i]
		if len(d) != 1 || !slices.Equal(d[0].Rcpts, []string{wantRcpt}) || !strings.Contains(string(d[0].Data), "Subject: one") {
			t.Fatalf("%s took %+v, want one message for %s", b.name, d, wantRcpt)
		}
	}

	backs[1].lmtp.DropInData(true)
	replies = lmtpMessage(t, e, rcpts, bodyOf("two")+strings.Repeat(strings.Repeat("x", 70)+"\r\n", 2000))
	if len(replies) != 3 || !strings.HasPrefix(replies[0], "451 4.4.2 <bob@example.org> ") ||
		replies[1] != "250 2.0.0 <ann@example.org> saved on mail1" || replies[2] != "250 2.0.0 <cy@example.org> saved on mail3" {
		t.Fatalf("with mail2 failing mid-DATA, replies are %q", replies)
	}
	for i, b := range backs {
		if n := len(b.lmtp.Deliveries()); n != []int{2, 1, 2}[i] {
			t.Fatalf("%s has %d messages", b.name, n)
		}
	}
	// The client's failure on one backend does not take it down.
	if !strings.Contains(e.Logs.String(), `backend transaction failed`) {
		t.Fatal("no log line for the failed backend transaction")
	}
}

// TestLMTPBackendReplies: a recipient refused at RCPT or after DATA gets
// the backend's own refusal, and an unknown backend state never becomes a
// 250; go-smtp's client in front reads the replies.
func TestLMTPBackendReplies(t *testing.T) {
	users := map[string]string{"ann@example.org": "pw", "bob@example.org": "pw", "cy@example.org": "pw"}
	backs, _ := storeBackends(t, 2, users)
	pins := `pins = { "ann@example.org" = "mail1", "bob@example.org" = "mail2", "cy@example.org" = "mail2" }` + "\n"
	e := startProxy(t, storeConfig(pins, backs))
	backs[1].lmtp.mu.Lock()
	backs[1].lmtp.failRcpt["cy@example.org"] = &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	backs[1].lmtp.failAfter["bob@example.org"] = &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
	backs[1].lmtp.mu.Unlock()

	conn, err := net.DialTimeout("tcp", e.Addr["lmtp"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := gosmtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mx.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.net", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"ann@example.org", "bob@example.org"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	err = c.Rcpt("cy@example.org", nil)
	if se, ok := err.(*gosmtp.SMTPError); !ok || se.Code != 550 || se.Message != "no such user here" {
		t.Fatalf("RCPT cy: %v, want the backend's 550", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(bodyOf("replies")))
	resps, err := w.CloseWithLMTPResponse()
	if resps["ann@example.org"] == nil || !strings.Contains(resps["ann@example.org"].StatusText, "saved on mail1") {
		t.Fatalf("ann: %+v", resps)
	}
	lde, ok := err.(gosmtp.LMTPDataError)
	if !ok || lde["bob@example.org"] == nil || lde["bob@example.org"].Code != 452 || lde["bob@example.org"].Message != "<bob@example.org> mailbox full" {
		t.Fatalf("bob: %v, want the backend's 452", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// TestLMTPFollowsIMAP: for 1,000 users, an LMTP delivery goes to the
// backend an IMAP login of the same user goes to: without a live session
// (hashing), and with one placed where hashing would not put it now.
func TestLMTPFollowsIMAP(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 users")
	}
	const n = 1000
	all := users(n, "user")
	backs, tr := storeBackends(t, 3, all)
	// IMAP logins "user7", recipients "user7@example.org": one user.
	e := startProxy(t, "[auth]\ndefault_domain = \"example.org\"\n"+storeConfig("linger = \"0s\"\n", backs))
	names := make([]string, 0, n)
	rcpts := make([]string, 0, n)
	for i := range n {
		names = append(names, fmt.Sprintf("user%d", i))
		rcpts = append(rcpts, fmt.Sprintf("user%d@example.org", i))
	}
	delivered := func() map[string]string {
		out := map[string]string{}
		for _, b := range backs {
			for u := range b.lmtp.Recipients() {
				out[strings.TrimSuffix(u, "@example.org")] = b.name
			}
			b.lmtp.mu.Lock()
			b.lmtp.deliveries = nil
			b.lmtp.mu.Unlock()
		}
		return out
	}
	deliverAll := func() map[string]string {
		for i := 0; i < n; i += 100 {
			for _, r := range lmtpMessage(t, e, rcpts[i:i+100], bodyOf("batch")) {
				if !strings.HasPrefix(r, "250 ") {
					t.Fatalf("delivery: %s", r)
				}
			}
		}
		got := delivered()
		if len(got) != n {
			t.Fatalf("%d users got mail, want %d", len(got), n)
		}
		return got
	}
	imapBackendOf := func(u string) string {
		for b := range tr.Sessions(u) {
			return b
		}
		return ""
	}
	login := func(u string) *imapclient.Client {
		c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(u, "pw").Wait(); err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Without a live session: both hash.
	lmtp := deliverAll()
	perBackend := map[string]int{}
	for _, u := range names {
		c := login(u)
		if got := imapBackendOf(u); got != lmtp[u] {
			t.Fatalf("%s: LMTP delivered on %s, IMAP login on %s", u, lmtp[u], got)
		}
		perBackend[lmtp[u]]++
		c.Logout().Wait()
		c.Close()
		waitFor(t, 5*time.Second, u+" logged out", func() bool { return len(tr.Sessions(u)) == 0 })
	}
	t.Logf("without live sessions: %v", perBackend)

	// With live sessions placed while mail3 took no new users.
	pool := e.Srv.Pool("main")
	pool.SetWeight(pool.Backend("mail3"), 0)
	live := make([]*imapclient.Client, n)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := i; j < n; j += 8 {
				c, err := imapclient.DialInsecure(e.Addr["imap"], nil)
				if err != nil {
					t.Error(err)
					return
				}
				if err := c.Login(names[j], "pw").Wait(); err != nil {
					t.Error(err)
				}
				live[j] = c
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range live {
			if c != nil {
				c.Close()
			}
		}
	}()
	if t.Failed() {
		t.FailNow()
	}
	pool.SetWeight(pool.Backend("mail3"), 1)
	lmtp2 := deliverAll()
	moved := 0
	for _, u := range names {
		where := imapBackendOf(u)
		if where == "" || where == "mail3" {
			t.Fatalf("%s: live IMAP session on %q", u, where)
		}
		if lmtp2[u] != where {
			t.Fatalf("%s: LMTP delivered on %s, live IMAP session on %s", u, lmtp2[u], where)
		}
		if lmtp[u] != where {
			moved++
		}
	}
	// A second IMAP login of each user goes where the first is, as LMTP did.
	for _, u := range names[:100] {
		c := login(u)
		if s := tr.Sessions(u); len(s) != 1 || s[lmtp2[u]] != 2 {
			t.Fatalf("%s: IMAP sessions %v, LMTP on %s", u, s, lmtp2[u])
		}
		c.Close()
	}
	if moved < 200 {
		t.Fatalf("only %d users live elsewhere than hashing says: the test shows nothing", moved)
	}
	t.Logf("with live sessions: %d of %d users delivered away from their hash backend, to their session's", moved, n)
}

// TestLMTPUnixSocket: an lmtp listener on a unix socket path, as Postfix's
// lmtp:unix: transport wants it; a stale socket file left by an earlier
// run is replaced, a live one is not taken over.
func TestLMTPUnixSocket(t *testing.T) {
	backs, _ := storeBackends(t, 1, map[string]string{"ann@example.org": "pw"})
	sock := filepath.Join(t.TempDir(), "lmtp")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, as after a crash
	cfgText := strings.Replace(storeConfig("", backs), `address = "127.0.0.1:2"`, fmt.Sprintf("address = %q", sock), 1)
	for _, dummy := range []string{"127.0.0.1:1", "127.0.0.1:3"} { // OpenListeners binds them all
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		cfgText = strings.Replace(cfgText, `"`+dummy+`"`, `"`+ln.Addr().String()+`"`, 1)
	}
	cfg, err := config.Parse([]byte("[admin]\nlisten = \"\"\n[tls]\ncert = \"generated.pem\"\nkey = \"generated.pem\"\n"+cfgText), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Handlers: handlers(), Certs: mtls.StaticCertStore(tc.cert)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.OpenListeners(); err != nil {
		t.Fatalf("open listeners over a stale socket: %v", err)
	}
	defer srv.Close()

	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := gosmtp.NewClientLMTP(c)
	if err := lc.Hello("mx.test"); err != nil {
		t.Fatal(err)
	}
	if err := lc.Mail("sender@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if err := lc.Rcpt("ann@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := lc.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(bodyOf("over a unix socket")))
	if resps, err := w.CloseWithLMTPResponse(); err != nil || !strings.Contains(resps["ann@example.org"].StatusText, "saved on mail1") {
		t.Fatalf("delivery: %v %v", resps, err)
	}
	lc.Quit()

	// A second server must not take over the live socket.
	srv2, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.DiscardHandler), Handlers: handlers(), Certs: mtls.StaticCertStore(tc.cert)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.OpenListeners(); err == nil {
		srv2.Close()
		t.Fatal("a second server took over a live LMTP socket")
	}
	if strings.Contains(logs.String(), "panic") {
		t.Fatalf("log:\n%s", logs)
	}
}
