package realmail

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// needAdmin skips the test when the binary serves no admin API.
func (p *mailproxy) needAdmin(t *testing.T) {
	t.Helper()
	var err error
	ok := p.logs.wait(3*time.Second, p.exited, func() bool {
		_, err = p.status()
		return err == nil
	})
	if !ok {
		t.Skipf("mailproxy serves no admin API on [admin] listen (GET /status: %v): proxy/admin is not wired into `mailproxy run` yet", err)
	}
}

// ctl runs `mailproxy ctl` as an operator would: it finds the admin API
// through the same config file the server runs with.
func (p *mailproxy) ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(t, 30*time.Second, p.h.bin, append([]string{"ctl", "-config", p.config}, args...)...)
}

// drain drains backend through `mailproxy ctl`, or through the admin API
// when the binary has no ctl subcommand yet.
func (p *mailproxy) drain(t *testing.T, backend string) {
	t.Helper()
	out, err := p.ctl(t, "drain", "main", backend)
	if strings.Contains(out, `unknown command "ctl"`) {
		t.Logf("mailproxy has no ctl subcommand yet (cmd/mailproxy/ctl.go): draining through POST /pools/main/backends/%s/drain", backend)
		resp, err := http.Post(p.Admin+"/pools/main/backends/"+backend+"/drain", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("POST drain: %s", resp.Status)
		}
		return
	}
	if err != nil {
		t.Fatalf("mailproxy ctl drain main %s: %v\n%s", backend, err, out)
	}
	t.Logf("mailproxy ctl drain main %s: %s", backend, strings.TrimSpace(out))
}

// TestDrainThenStopDovecot is issue 7 point 4: drain dovecot-a through
// `mailproxy ctl`; new users go to dovecot-b while a user with a live
// session on dovecot-a still joins it there; the last session on
// dovecot-a ends; dovecot-a is stopped while clients keep logging in, and
// not one login fails. dovecot-a is started again at the end.
func TestDrainThenStopDovecot(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	p.needAdmin(t)

	// Twenty users with a session each, spread over both instances.
	us := users(170, 20)
	clients := map[string]*imapclient.Client{}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, u := range us {
		c, err := p.dialIMAP(t, "plain", u, "")
		if err != nil {
			t.Fatal(err)
		}
		clients[u] = c
	}
	var onA []string
	poll(t, 15*time.Second, "doveadm who to list the 20 users", func() bool {
		seen := h.whoUsers(t, set(us))
		onA = onA[:0]
		for u := range seen["a"] {
			onA = append(onA, u)
		}
		return len(seen["a"])+len(seen["b"]) == len(us)
	})
	if len(onA) == 0 || len(onA) == len(us) {
		t.Fatalf("%d of %d users on dovecot-a: want both instances in use before the drain", len(onA), len(us))
	}
	t.Logf("before the drain: %d of %d users on dovecot-a", len(onA), len(us))

	p.drain(t, "a")
	if out, err := p.ctl(t, "status"); err == nil {
		t.Logf("mailproxy ctl status after the drain:\n%s", out)
	}

	// A user still on dovecot-a keeps going there: a second session of
	// onA[0] must not split it.
	sticky := onA[0]
	c2, err := p.dialIMAP(t, "plain", sticky, "")
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, sticky+"'s second session in doveadm who", func() bool {
		return h.whoUsers(t, set([]string{sticky}))["a"][sticky] == 2
	})
	c2.Logout().Wait()
	c2.Close()

	// New users all go to dovecot-b.
	fresh := users(190, 10)
	m := h.mark(t)
	for _, u := range fresh {
		c, err := p.dialIMAP(t, "plain", u, "")
		if err != nil {
			t.Fatal(err)
		}
		c.Logout().Wait()
		c.Close()
	}
	for _, l := range h.waitLogins(t, m, "10 logins of new users", func(ls []login) bool { return len(ls) >= len(fresh) }) {
		if l.inst != "b" {
			t.Errorf("new user %s went to draining dovecot-a: %s", l.user, l.line)
		}
	}

	// The last sessions on dovecot-a end (the clients log out).
	for _, u := range onA {
		if err := clients[u].Logout().Wait(); err != nil {
			t.Errorf("%s LOGOUT: %v", u, err)
		}
		clients[u].Close()
		delete(clients, u)
	}
	poll(t, 15*time.Second, "dovecot-a to have no session left", func() bool {
		ws, err := h.who(t, "a")
		return err == nil && len(ws) == 0
	})
	poll(t, 15*time.Second, "mailproxy's /status to count no session on a", func() bool {
		n, err := p.backendSessions("a")
		return err == nil && n == 0
	})

	// Stop dovecot-a while clients keep logging in: IMAP (also the users
	// that were on dovecot-a and still linger there) and POP3. Go on until
	// the stop is done, mailproxy's health check has seen dovecot-a go
	// down, and 20 more logins have been made after that.
	t.Cleanup(func() { restartDovecot(t, h, "a") })
	m = h.mark(t)
	results := loginLoad(t, p, append(append([]string{}, us...), fresh...))
	stopDone := make(chan error, 1)
	stopStart := time.Now()
	confA := h.conf(t, "a")
	go func() {
		out, err := output(60*time.Second, "dovecot", "-c", confA, "stop")
		if err != nil {
			err = fmt.Errorf("dovecot -c %s stop: %v\n%s", confA, err, out)
		}
		stopDone <- err
	}()
	downSeen := make(chan bool, 1)
	go func() {
		downSeen <- p.logs.wait(30*time.Second, p.exited, func() bool {
			return p.backendDown("a", "imap")
		})
	}()
	var n, after, failures int
	stopped, down := false, false
	var stopTook time.Duration
	deadline := time.After(90 * time.Second)
	for !stopped || !down || after < 20 {
		select {
		case err := <-results.c:
			n++
			if stopped && down {
				after++
			}
			if err != nil {
				failures++
				t.Errorf("login failed while dovecot-a was stopping: %v", err)
			}
		case err := <-stopDone:
			stopped, stopTook = true, time.Since(stopStart)
			if err != nil {
				t.Error(err)
			}
		case ok := <-downSeen:
			down = true
			if !ok {
				t.Errorf("mailproxy's health check did not mark dovecot-a down for IMAP within 30s of the stop")
			}
		case <-deadline:
			t.Fatalf("stop not finished after 90s (stopped %v, marked down %v, %d logins after)", stopped, down, after)
		}
	}
	results.stop()
	t.Logf("dovecot-a stopped in %v; %d logins while it stopped and after, %d failed", stopTook.Round(time.Millisecond), n, failures)
	for _, l := range h.logins(t, m) {
		if l.inst == "a" {
			t.Errorf("a login reached dovecot-a after the drain: %s", l.line)
		}
	}
}

// load is a steady trickle of logins by several clients at once.
type load struct {
	c    chan error
	quit chan struct{}
	wg   sync.WaitGroup
}

func (l *load) stop() {
	close(l.quit)
	l.wg.Wait()
}

// loginLoad starts four clients that log in and out in turn as the given
// users, one every 20ms each; the fourth uses POP3 when mailproxy has it.
// Each login's result arrives on the channel.
func loginLoad(t *testing.T, p *mailproxy, us []string) *load {
	l := &load{c: make(chan error), quit: make(chan struct{})}
	for w := range 4 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := w; ; i += 4 {
				select {
				case <-l.quit:
					return
				case <-tick.C:
				}
				u := us[i%len(us)]
				var err error
				if w == 3 && p.has("pop3") {
					err = p.pop3Login(t, u)
				} else {
					var c *imapclient.Client
					if c, err = p.dialIMAP(t, "plain", u, ""); err == nil {
						err = c.Logout().Wait()
						c.Close()
					}
				}
				select {
				case l.c <- err:
				case <-l.quit:
					return
				}
			}
		}()
	}
	return l
}

// backendDown reports whether mailproxy has logged backend down for proto.
func (p *mailproxy) backendDown(backend, proto string) bool {
	for _, e := range p.logs.find("backend down", "backend", backend) {
		if e["protocol"] == proto {
			return true
		}
	}
	for _, e := range p.logs.find("backend state changed", "backend", backend) {
		if e["protocol"] == proto && e["state"] == "down" {
			return true
		}
	}
	return false
}

// restartDovecot starts a stopped instance again with its own config, for
// the tests that follow; stop.sh finds it through its pid file.
func restartDovecot(t *testing.T, h *harness, inst string) {
	out, err := run(t, 30*time.Second, "dovecot", "-c", h.conf(t, inst))
	if err != nil {
		t.Errorf("restart dovecot-%s: %v\n%s", inst, err, out)
		return
	}
	greets(t, h.addr(t, "DOVECOT_"+strings.ToUpper(inst)+"_IMAP_PORT"), "* OK", 20*time.Second)
}
