package integration

import (
	"crypto/tls"
	"encoding/base64"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/sievefake"
)

const sieveScript = "require [\"fileinto\"];\r\nif header :contains \"subject\" \"[list]\" {\r\n  fileinto \"Lists\";\r\n}\r\n"

// sieveLogins maps each backend's name to the users who logged in there.
func sieveLogins(backs []*storeBackend) map[string][]string {
	out := map[string][]string{}
	for _, b := range backs {
		if l := b.sieve.Logins(); len(l) > 0 {
			out[b.name] = l
		}
	}
	return out
}

// TestManageSieveThroughProxy: PUTSCRIPT, LISTSCRIPTS and GETSCRIPT round
// trips through mailproxy, on a plain connection and after STARTTLS, with
// the initial response as a quoted string and as a literal, and SASL
// LOGIN; each user's script lands on the backend an IMAP login of the user
// goes to. No password reaches the log.
func TestManageSieveThroughProxy(t *testing.T) {
	users := map[string]string{"ann@example.org": "Ann-Sieve-Secret", "bob@example.org": "Bob-Sieve-Secret", "cy@example.org": "Cy-Sieve-Secret"}
	backs, tr := storeBackends(t, 3, users)
	// No linger: the IMAP login below is placed on its own, not after the
	// ManageSieve session.
	e := startProxy(t, storeConfig("linger = \"0s\"\n", backs))
	pool := e.Srv.Pool("main")

	for _, tc := range []struct {
		user, mode string
		login      func(c *sievefake.Client, user, pw string) (*sievefake.Response, error)
	}{
		{"ann@example.org", "plain", func(c *sievefake.Client, u, pw string) (*sievefake.Response, error) { return c.AuthPlain(u, pw, false) }},
		{"bob@example.org", "starttls", func(c *sievefake.Client, u, pw string) (*sievefake.Response, error) { return c.AuthPlain(u, pw, true) }},
		{"cy@example.org", "starttls", func(c *sievefake.Client, u, pw string) (*sievefake.Response, error) { return c.AuthLogin(u, pw) }},
	} {
		t.Run(tc.user+"/"+tc.mode, func(t *testing.T) {
			c, err := sievefake.Dial(e.Addr["sieve"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Conn.Close()
			if _, ok := c.Caps["STARTTLS"]; !ok || c.Caps["SASL"] != "PLAIN LOGIN" {
				t.Fatalf("greeting capabilities %v", c.Caps)
			}
			if tc.mode == "starttls" {
				if err := c.StartTLS(e.ClientTLS()); err != nil {
					t.Fatal(err)
				}
				if _, ok := c.Caps["STARTTLS"]; ok {
					t.Fatal("STARTTLS offered again after TLS")
				}
			}
			if resp, err := tc.login(c, tc.user, users[tc.user]); err != nil || resp.Err() != nil {
				t.Fatalf("login: %+v %v", resp, err)
			}
			if err := c.PutScript("filters", sieveScript); err != nil {
				t.Fatalf("PUTSCRIPT: %v", err)
			}
			if _, err := c.Cmd(`SETACTIVE "filters"`); err != nil {
				t.Fatal(err)
			}
			list, err := c.ListScripts()
			if err != nil || !slices.Equal(list, []string{"filters ACTIVE"}) {
				t.Fatalf("LISTSCRIPTS: %q %v", list, err)
			}
			got, err := c.GetScript("filters")
			if err != nil || got != sieveScript {
				t.Fatalf("GETSCRIPT: %q %v", got, err)
			}
			if err := c.Logout(); err != nil {
				t.Fatal(err)
			}
			var on []string
			for _, b := range backs {
				if _, ok := b.sieve.Script(tc.user, "filters"); ok {
					on = append(on, b.name)
				}
			}
			if len(on) != 1 {
				t.Fatalf("script on %v, want one backend", on)
			}
			waitFor(t, 5*time.Second, "the ManageSieve session to end", func() bool { return len(pool.UserSessions(tc.user)) == 0 })
			imap, err := imapclient.DialInsecure(e.Addr["imap"], nil)
			if err != nil {
				t.Fatal(err)
			}
			defer imap.Close()
			if err := imap.Login(tc.user, users[tc.user]).Wait(); err != nil {
				t.Fatal(err)
			}
			if s := tr.Sessions(tc.user); s[on[0]] != 1 {
				t.Fatalf("IMAP login on %v, the script on %s", s, on[0])
			}
		})
	}
	for _, pw := range users {
		if strings.Contains(e.Logs.String(), pw) {
			t.Fatalf("a password is in the log:\n%s", e.Logs)
		}
	}
}

// TestManageSieveFollowsLiveIMAP: a user whose live IMAP session is on a
// backend hashing would no longer choose logs in to ManageSieve there, as
// POP3 would, never on the hash's backend.
func TestManageSieveFollowsLiveIMAP(t *testing.T) {
	users := map[string]string{"ann@example.org": "pw"}
	backs, tr := storeBackends(t, 3, users)
	e := startProxy(t, storeConfig("linger = \"0s\"\n", backs))
	sieveLogin := func() {
		t.Helper()
		c, err := sievefake.Dial(e.Addr["sieve"])
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := c.AuthPlain("ann@example.org", "pw", false); err != nil || resp.Err() != nil {
			t.Fatalf("login: %+v %v", resp, err)
		}
		c.Logout()
	}
	sieveLogin()
	var hash string
	for name := range sieveLogins(backs) {
		hash = name
	}
	pool := e.Srv.Pool("main")
	waitFor(t, 5*time.Second, "the ManageSieve session to end", func() bool { return len(pool.UserSessions("ann@example.org")) == 0 })
	pool.SetWeight(pool.Backend(hash), 0)
	imap, err := imapclient.DialInsecure(e.Addr["imap"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer imap.Close()
	if err := imap.Login("ann@example.org", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	pool.SetWeight(pool.Backend(hash), 1)
	var live string
	for b := range tr.Sessions("ann@example.org") {
		live = b
	}
	if live == "" || live == hash {
		t.Fatalf("IMAP session on %q, hash says %s: the test shows nothing", live, hash)
	}
	sieveLogin()
	if got := sieveLogins(backs); len(got[live]) != 1 || len(got[hash]) != 1 {
		t.Fatalf("ManageSieve logins %v: want the second on %s (the live IMAP session's), the first on %s", got, live, hash)
	}
}

// TestManageSieveStartTLSInjection: a login pipelined after STARTTLS in the
// plaintext packet is thrown away; the first answer after the handshake is
// the capability list, the next the answer to the client's own command.
func TestManageSieveStartTLSInjection(t *testing.T) {
	users := map[string]string{"ann@example.org": "Injected-Secret"}
	backs, _ := storeBackends(t, 1, users)
	e := startProxy(t, storeConfig("", backs))
	s := dialScript(t, e.Addr["sieve"])
	for !strings.HasPrefix(s.expect(""), "OK") {
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00ann@example.org\x00Injected-Secret"))
	s.send("STARTTLS\r\nAUTHENTICATE \"PLAIN\" \"" + ir + "\"\r\nPUTSCRIPT \"evil\" {4+}\r\nkeep\r\n")
	s.expect("OK ")
	tc := tls.Client(s.conn, e.ClientTLS())
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c, err := sievefake.NewClient(tc)
	if err != nil {
		t.Fatalf("capabilities after TLS: %v", err)
	}
	resp, err := c.Cmd(`NOOP "after"`)
	if err != nil || resp.Text != `(TAG "after") "NOOP completed."` {
		t.Fatalf("first answer after TLS: %+v %v", resp, err)
	}
	if got := sieveLogins(backs); len(got) != 0 {
		t.Fatalf("the injected login reached a backend: %v", got)
	}
	if strings.Contains(e.Logs.String(), "Injected-Secret") || strings.Contains(e.Logs.String(), ir) {
		t.Fatal("the injected password is in the log")
	}
}

// TestStoreProtocolsInStatusAndMetrics: health checks probe the backends'
// LMTP and ManageSieve ports, and /status and /metrics show the result.
func TestStoreProtocolsInStatusAndMetrics(t *testing.T) {
	backs, _ := storeBackends(t, 2, map[string]string{"ann@example.org": "pw"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	backs[1].addrs[1], backs[1].addrs[2] = ln.Addr().String(), ln.Addr().String() // nothing listens there
	e := startProxy(t, storeConfig("  [pool.health]\n  interval = \"20ms\"\n  fall = 1\n  rise = 1\n", backs))
	pool := e.Srv.Pool("main")
	waitFor(t, 5*time.Second, "mail2's LMTP and ManageSieve down", func() bool {
		st := pool.Status()[1]
		return st.Health["lmtp"] == "down" && st.Health["managesieve"] == "down"
	})
	if st := pool.Status()[0]; st.Health["lmtp"] != "up" || st.Health["managesieve"] != "up" || st.Health["imap"] != "up" {
		t.Fatalf("mail1 health %v", st.Health)
	}
	if st := pool.Status()[1]; st.Health["imap"] != "up" || st.State != "down" {
		t.Fatalf("mail2 %+v", st)
	}
	rec := httptest.NewRecorder()
	e.Srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`mailproxy_backend_state{backend="mail1",pool="main",protocol="lmtp",state="up"} 1`,
		`mailproxy_backend_state{backend="mail2",pool="main",protocol="lmtp",state="down"} 1`,
		`mailproxy_backend_state{backend="mail2",pool="main",protocol="managesieve",state="down"} 1`,
		`mailproxy_sessions{listener="lmtp",protocol="lmtp"} 0`,
		`mailproxy_sessions{listener="sieve",protocol="managesieve"} 0`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A delivery to a user hashing to mail2 goes to mail1 now.
	for _, r := range lmtpMessage(t, e, []string{"ann@example.org", "zed@example.org"}, bodyOf("down")) {
		if !strings.Contains(r, "saved on mail1") {
			t.Fatalf("reply %q", r)
		}
	}
}
