package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/internal/testkit"
)

// loginIMAPPassword logs in with go-imap's client.
func loginIMAPPassword(addr, user, password string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	return c, nil
}

// faultyLoginBackend is an IMAP or POP3 backend that greets and answers
// everything the health probe and the proxy ask before a login, and then
// fails the login itself: "stuck" reads it and never answers, "drop"
// hangs up on it.
func faultyLoginBackend(t *testing.T, proto, mode string) string {
	return testkit.Serve(t, &testkit.ConnServer{Handle: func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		fail := func() {
			if mode == "stuck" {
				io.Copy(io.Discard, r)
			}
		}
		if proto == "pop3" {
			io.WriteString(c, "+OK "+mode+" ready\r\n")
		} else {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID] "+mode+" ready\r\n")
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if proto == "pop3" {
				switch strings.ToUpper(f[0]) {
				case "CAPA":
					io.WriteString(c, "+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n")
				case "QUIT":
					io.WriteString(c, "+OK bye\r\n")
					return
				default: // AUTH, USER, PASS
					fail()
					return
				}
				continue
			}
			if len(f) < 2 {
				return
			}
			switch strings.ToUpper(f[1]) {
			case "CAPABILITY":
				fmt.Fprintf(c, "* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID\r\n%s OK done\r\n", f[0])
			case "NOOP", "ID":
				fmt.Fprintf(c, "%s OK done\r\n", f[0])
			case "LOGOUT":
				fmt.Fprintf(c, "* BYE bye\r\n%s OK done\r\n", f[0])
				return
			default: // LOGIN, AUTHENTICATE
				fail()
				return
			}
		}
	}})
}

// loginRetryConfig is one listener of proto in front of pool "p" with
// backends "stuck", "drop" and "good", health checked once (interval 1h)
// so that only sessions can charge them; fall = 3.
func loginRetryConfig(proto string, stuck, drop, good string) string {
	return fmt.Sprintf(`
[limits]
auth_failure_delay = "0s"
login_timeout = "20s"
backend_timeout = "300ms"
max_connections_per_ip = 10000

[[listener]]
name = %[1]q
protocol = %[1]q
address = "127.0.0.1:1"
pool = "p"

[[pool]]
name = "p"
  [pool.health]
  interval = "1h"
  rise = 1
  fall = 3
  [[pool.backend]]
  name = "stuck"
  %[1]s = %[2]q
  [[pool.backend]]
  name = "drop"
  %[1]s = %[3]q
  [[pool.backend]]
  name = "good"
  %[1]s = %[4]q
`, proto, stuck, drop, good)
}

// TestLoginRetryBackendFault (issue 10, point 4): a backend that greets
// and then never answers the backend login, or hangs up on it, costs an
// IMAP or POP3 login at most backend_timeout: the backend is charged and
// the next one tried, so every client gets in; after fall such logins
// both faulty backends are down. A wrong password still gets the
// backend's own rejection and charges no backend.
func TestLoginRetryBackendFault(t *testing.T) {
	// The demo backends' rejections (mailproxy's own IMAP text would be
	// "Invalid credentials."; the log below tells the POP3 ones apart).
	wrongText := map[string]string{"imap": "NO [AUTHENTICATIONFAILED] Authentication failed", "pop3": "-ERR [AUTH] Authentication failed."}
	for _, proto := range []string{"imap", "pop3"} {
		t.Run(proto, func(t *testing.T) {
			all := users(30, "u")
			var good string
			if proto == "imap" {
				_, good = imapBackend(t, "good", all, nil)
			} else {
				_, good = pop3Backend(t, "good", all, nil)
			}
			e := startProxy(t, loginRetryConfig(proto, faultyLoginBackend(t, proto, "stuck"), faultyLoginBackend(t, proto, "drop"), good))
			timeout := e.Cfg.Limits.BackendTimeout.Duration
			pool := e.Srv.Pool("p")
			state := func() map[string]string {
				m := map[string]string{}
				for _, st := range pool.Status() {
					m[st.Name] = st.State
				}
				return m
			}
			waitFor(t, 5*time.Second, "every backend up", func() bool {
				s := state()
				return s["stuck"] == "up" && s["drop"] == "up" && s["good"] == "up"
			})
			login := func(user, password string) error {
				if proto == "imap" {
					c, err := loginIMAPPassword(e.Addr[proto], user, password)
					if err == nil {
						c.Logout().Wait()
						c.Close()
					}
					return err
				}
				return pop3Session(e.Addr[proto], user, password)
			}
			var worst time.Duration
			n := 0
			for i := 0; i < 30; i++ {
				s := state()
				if s["stuck"] == "down" && s["drop"] == "down" {
					break
				}
				start := time.Now()
				err := login(fmt.Sprintf("u%d", i), "pw")
				took := time.Since(start)
				worst, n = max(worst, took), n+1
				if err != nil {
					t.Fatalf("login u%d after %v: %v", i, took, err)
				}
				if took > timeout+700*time.Millisecond {
					t.Errorf("login u%d took %v, want about backend_timeout (%v)", i, took, timeout)
				}
			}
			t.Logf("%s: %d logins until both faulty backends were down, slowest %v (backend_timeout %v); state %v", proto, n, worst, timeout, state())
			logs := e.Logs.String()
			for _, name := range []string{"stuck", "drop"} {
				if !strings.Contains(grepLines(logs, "backend failed"), "backend="+name) {
					t.Errorf("no login tried backend %s: the test proves nothing", name)
				}
			}
			if s := state(); s["stuck"] != "down" || s["drop"] != "down" || s["good"] != "up" {
				t.Fatalf("after %d logins: %v, want stuck and drop down (fall = 3), good up", n, s)
			}

			// A wrong password is the client's: the backend's own text,
			// fall times over, and good stays up.
			for i := 0; i < 4; i++ {
				err := login("u0", "wrong")
				if err == nil {
					t.Fatal("login with a wrong password succeeded")
				}
				if i == 0 {
					t.Logf("wrong password: %v", err)
				}
				if !strings.Contains(err.Error(), wrongText[proto]) {
					t.Errorf("wrong password: %v, want the backend's rejection %q", err, wrongText[proto])
				}
			}
			if got := strings.Count(grepLines(e.Logs.String(), "login rejected by backend"), "backend=good"); got != 4 {
				t.Errorf("%d logins rejected by backend good, want 4", got)
			}
			if s := state(); s["good"] != "up" {
				t.Errorf("after wrong passwords: good is %s, want up", s["good"])
			}
			if err := login("u1", "pw"); err != nil {
				t.Errorf("login after wrong passwords: %v", err)
			}
		})
	}
}
