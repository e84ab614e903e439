package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailproxy/internal/demo"
	"mailproxy/proxy/admin"
)

// TestFailoverNetns is the pair as operators run it, measured from a
// client's side: a client, two mailproxy processes and an IMAP backend on
// a bridge in network namespaces, the nodes with [peer] vip on their LAN
// interface, heartbeats on a cable of their own, the backend host as the
// witness, and defaults for interval and dead_after. Each fault is timed from the moment the test causes it
// to the first IMAP greeting through the virtual address from the node
// that took over.
//
// MAILPROXY_SOAK sets how long the saturated-CPU case runs (default one
// minute in CI, 15 seconds elsewhere); MAILPROXY_FAILOVER_RUNS the runs per
// timed case (default 10).
func TestFailoverNetns(t *testing.T) {
	needNetns(t)
	p := newPairLab(t)
	n1, n2 := p.nodes[0], p.nodes[1]
	p.start(n1)
	p.start(n2)
	p.waitSettled()

	runs := envInt(t, "MAILPROXY_FAILOVER_RUNS", 10)
	t.Run("kill", func(t *testing.T) {
		p.t = t
		var ds []time.Duration
		for range runs {
			a, s := p.roles()
			t0 := time.Now()
			a.kill()
			ds = append(ds, p.firstGreeting(t, t0, s))
			p.start(a)
			p.waitSettled()
		}
		report(t, "kill -9 of the active node", ds)
	})
	t.Run("ipv6", func(t *testing.T) {
		// The IPv6 address moves too (unsolicited neighbour advertisement).
		p.t = t
		var ds []time.Duration
		for range 3 {
			a, _ := p.roles()
			t0 := time.Now()
			a.kill()
			ds = append(ds, p.firstOK(t, t0, func() bool { return strings.HasPrefix(p.greetingLine(pairIMAP6), "* OK") },
				func() string { return "no IMAP greeting via " + pairIMAP6 + ": " + p.greetingLine(pairIMAP6) }))
			p.start(a)
			p.waitSettled()
		}
		t.Logf("kill -9, IPv6 address: %v", ds)
		if slices.Max(ds) > time.Second {
			t.Errorf("an IPv6 takeover took %v, want at most 1s", slices.Max(ds))
		}
	})
	t.Run("linkdown", func(t *testing.T) {
		p.t = t
		var ds []time.Duration
		for range runs {
			a, s := p.roles()
			t0 := time.Now()
			p.lab.ip("lan", "link", "set", "v-"+a.name, "down")
			ds = append(ds, p.firstGreeting(t, t0, s))
			p.lab.ip("lan", "link", "set", "v-"+a.name, "up")
			p.waitSettled()
		}
		report(t, "link of the active node down", ds)
	})
	t.Run("heartbeat-cut", func(t *testing.T) {
		p.t = t
		// n1 outranks n2. Make n1 the active one, cut the heartbeat cable
		// so n2 takes the address too (both active, the client drawn to
		// n2), then heal: n1 must win and the client reach it in 1s.
		if a, _ := p.roles(); a != n1 {
			a.kill()
			p.start(a)
			p.waitSettled()
		}
		p.lab.ip("n1", "link", "set", "hb0", "down")
		p.waitStatus(n2, 5*time.Second, "n2 active during the cut", func(st admin.Status) bool { return st.Pair.Applied == "active" })
		p.firstGreeting(t, time.Now(), n2)
		t0 := time.Now()
		p.lab.ip("n1", "link", "set", "hb0", "up")
		d := p.firstGreeting(t, t0, n1)
		t.Logf("heartbeat path healed: the client reached the winner n1 after %v", d.Round(time.Millisecond))
		if d > time.Second {
			t.Errorf("after the heal the client reached the winner after %v, want at most 1s", d)
		}
		p.waitSettled()
		// The loser saw both nodes active (the winner may not have: the
		// loser's step-down can reach it first).
		if st := p.status(t, n2); st.Pair.Conflicts == 0 {
			t.Errorf("n2 counted no conflict: %+v", st.Pair)
		}
		for range 5 {
			if who := p.greeting(); who != n1.host {
				t.Errorf("after the heal a greeting came from %q, want %s", who, n1.host)
			}
		}
	})
	t.Run("stall", func(t *testing.T) {
		// A standby frozen for 2s (SIGSTOP, as a paused VM) wakes up to an
		// overdue dead timer and a socket full of heartbeats: it must read
		// them rather than take over.
		p.t = t
		for range 5 {
			a, s := p.roles()
			before := p.status(t, s).Pair.Takeovers
			s.cmd.Process.Signal(syscall.SIGSTOP)
			time.Sleep(2 * time.Second) // the stall itself: nothing to wait for
			s.cmd.Process.Signal(syscall.SIGCONT)
			p.waitSettled()
			if st := p.status(t, s); st.Pair.Takeovers != before || st.Pair.Applied != "standby" {
				t.Fatalf("%s took over after a stall: %+v", s.name, st.Pair)
			}
			if who := p.greeting(); who != a.host {
				t.Fatalf("after %s's stall the client reached %q", s.name, who)
			}
		}
	})
	t.Run("drain", func(t *testing.T) { p.t = t; testPairDrain(t, p) })
	t.Run("saturated", func(t *testing.T) { p.t = t; testPairSaturated(t, p) })
}

// testPairDrain: a drain made on the active node is in force on the
// standby at once, after a takeover, and after either node restarts, even
// when both do.
func testPairDrain(t *testing.T, p *pairLab) {
	a, s := p.roles()
	draining := func(st admin.Status) bool {
		for _, b := range st.Pools[0].Backends {
			if b.Name == "mail1" {
				return b.State == "draining"
			}
		}
		return false
	}
	p.post(t, a, "/pools/p/backends/mail1/drain")
	p.waitStatus(s, 2*time.Second, "the drain on the standby", draining)
	a.kill() // takeover: s is active
	p.firstGreeting(t, time.Now(), s)
	p.waitStatus(s, time.Second, "the drain on the new active node", draining)
	p.start(a) // restart of the old active node
	p.waitSettled()
	p.waitStatus(a, 2*time.Second, "the drain on the restarted node", draining)
	s.kill() // restart of the other one
	p.start(s)
	p.waitSettled()
	p.waitStatus(s, 2*time.Second, "the drain on the other restarted node", draining)
	a.kill() // both down; one comes back alone: only its state file knows
	s.kill()
	p.start(s)
	p.waitStatus(s, 5*time.Second, "the drain on a node restarted alone", func(st admin.Status) bool {
		return st.Pair.Applied == "active" && draining(st)
	})
	p.start(a)
	p.waitSettled()
	p.post(t, s, "/pools/p/backends/mail1/undrain")
	p.waitStatus(a, 2*time.Second, "the undrain on the standby", func(st admin.Status) bool { return !draining(st) })
}

// testPairSaturated keeps both CPUs busy (two busy processes per CPU, in
// the nodes' namespaces) and checks that no takeover happens.
func testPairSaturated(t *testing.T, p *pairLab) {
	soak := 15 * time.Second
	if os.Getenv("CI") == "true" {
		soak = time.Minute
	}
	if v := os.Getenv("MAILPROXY_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("MAILPROXY_SOAK=%q: %v", v, err)
		}
		soak = d
	}
	a, s := p.roles()
	before, beforeS := p.status(t, a).Pair, p.status(t, s).Pair
	ctx, cancel := context.WithTimeout(context.Background(), soak)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 2 * runtime.NumCPU() {
		ns := p.nodes[i%2].name
		cmd := p.lab.command(ns, "sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			<-ctx.Done()
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	t.Logf("%d busy processes for %v", 2*runtime.NumCPU(), soak)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	greetings, failed := 0, 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			if who := p.greeting(); who == a.host {
				greetings++
			} else {
				failed++
				t.Logf("greeting while saturated: %q, want %s", who, a.host)
			}
		}
	}
	wg.Wait()
	after, afterS := p.status(t, a).Pair, p.status(t, s).Pair
	t.Logf("saturated for %v: %d greetings from %s, %d not; takeovers %d -> %d (standby), conflicts %d -> %d",
		soak, greetings, a.name, failed, beforeS.Takeovers, afterS.Takeovers, before.Conflicts, after.Conflicts)
	if afterS.Takeovers != beforeS.Takeovers || after.Applied != "active" || afterS.Applied != "standby" {
		t.Errorf("a takeover happened under load: active %+v, standby %+v", after, afterS)
	}
	if failed > 0 {
		t.Errorf("%d of %d greetings failed under load", failed, failed+greetings)
	}
}

// pairLab is the topology of TestFailoverNetns.
type pairLab struct {
	t     *testing.T
	lab   *lab
	bin   string
	dir   string
	nodes []*labNode
}

const (
	pairVIP      = "192.0.2.100"
	pairIMAPAddr = pairVIP + ":143"
	pairVIP6     = "2001:db8::100"
	pairIMAP6    = "[" + pairVIP6 + "]:143"
	pairSMTPAddr = pairVIP + ":25" // its greeting names the node that answers
)

type labNode struct {
	p        *pairLab
	name     string // also its namespace and node name
	host     string // in its greeting
	addr     string // on the LAN; the admin API listens there
	cfg      string
	starts   int
	cmd      *exec.Cmd
	exited   chan struct{}
	logFiles []string
}

func newPairLab(t *testing.T) *pairLab {
	dir := t.TempDir()
	p := &pairLab{t: t, dir: dir, bin: buildMailproxy(t, dir)}
	p.lab = newLab(t)
	p.lab.host("cli", "192.0.2.10/24", "2001:db8::10/64")
	p.lab.host("be", "192.0.2.30/24")
	p.lab.host("n1", "192.0.2.11/24", "2001:db8::11/64")
	p.lab.host("n2", "192.0.2.12/24", "2001:db8::12/64")
	p.lab.cable("n1", "198.51.100.1/24", "n2", "198.51.100.2/24", "hb0")
	users := map[string]string{"alice": "pw"}
	for _, addr := range []string{"192.0.2.30:143", "192.0.2.30:1143"} {
		b := demo.NewIMAPServer("be", users, nil)
		ln := p.lab.listen("be", addr)
		go b.Serve(ln)
		t.Cleanup(func() { ln.Close() })
	}
	smtpd := demo.NewSMTPServer("be", demo.SMTPOptions{})
	ln := p.lab.listen("be", "192.0.2.30:25")
	go smtpd.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	secret := filepath.Join(dir, "peer.secret")
	os.WriteFile(secret, []byte("failover test secret\n"), 0o600)
	for i, name := range []string{"n1", "n2"} {
		n := &labNode{p: p, name: name, host: name + ".example", addr: fmt.Sprintf("192.0.2.%d", 11+i)}
		n.cfg = filepath.Join(dir, name+".toml")
		conf := fmt.Sprintf(pairConfig, n.addr, pairIMAPAddr, pairIMAP6, pairSMTPAddr, n.host, name,
			fmt.Sprintf("198.51.100.%d:7946", 1+i), fmt.Sprintf("198.51.100.%d:7946", 2-i),
			secret, 200-100*i, pairVIP, pairVIP6, filepath.Join(dir, name+".state"))
		if err := os.WriteFile(n.cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		p.nodes = append(p.nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range p.nodes {
			n.kill()
		}
		if t.Failed() {
			for _, n := range p.nodes {
				for _, f := range n.logFiles {
					b, _ := os.ReadFile(f)
					var lines []string
					for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
						if !strings.Contains(l, "msg=\"session ") {
							lines = append(lines, l)
						}
					}
					t.Logf("%s (last lines):\n%s", f, strings.Join(lines[max(0, len(lines)-40):], "\n"))
				}
			}
		}
	})
	return p
}

// pairConfig: interval and dead_after stay at their defaults.
const pairConfig = `
[log]
level = "info"
[admin]
listen = "%s:9025"
[[listener]]
name = "imap"
protocol = "imap"
address = "%s"
pool = "p"
[[listener]]
name = "imap6"
protocol = "imap"
address = "%s"
pool = "p"
[[listener]]
name = "smtp"
protocol = "smtp"
address = "%s"
hostname = "%s"
pool = "p"
[[pool]]
name = "p"
  [pool.health]
  interval = "1s"
  [[pool.backend]]
  name = "mail1"
  imap = "192.0.2.30:143"
  smtp = "192.0.2.30:25"
  [[pool.backend]]
  name = "mail2"
  imap = "192.0.2.30:1143"
  smtp = "192.0.2.30:25"
[peer]
node = "%s"
listen = "%s"
address = "%s"
secret_file = "%s"
priority = %d
vip = ["%s/24", "%s/64"]
interface = "eth0"
witness = "192.0.2.30"
[store]
state_file = "%s"
`

func buildMailproxy(t *testing.T, dir string) string {
	bin := filepath.Join(dir, "mailproxy")
	out, err := exec.Command("go", "build", "-o", bin, "mailproxy/cmd/mailproxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

func (p *pairLab) start(n *labNode) {
	p.t.Helper()
	n.starts++
	logPath := filepath.Join(p.dir, fmt.Sprintf("%s-%d.log", n.name, n.starts))
	f, err := os.Create(logPath)
	if err != nil {
		p.t.Fatal(err)
	}
	n.logFiles = append(n.logFiles, logPath)
	n.cmd = p.lab.command(n.name, p.bin, "run", "-config", n.cfg)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		f.Close()
		close(exited)
	}(n.cmd, n.exited)
}

// kill sends SIGKILL (ip netns exec execs mailproxy, so the pid is its)
// and waits for the process to end.
func (n *labNode) kill() {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	n.cmd = nil
}

func (p *pairLab) status(t *testing.T, n *labNode) admin.Status {
	t.Helper()
	st, err := p.tryStatus(n)
	if err != nil {
		t.Fatalf("status of %s: %v", n.name, err)
	}
	return st
}

func (p *pairLab) tryStatus(n *labNode) (admin.Status, error) {
	var st admin.Status
	resp, err := p.lab.httpClient("cli").Get("http://" + n.addr + ":9025/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, err
	}
	if st.Pair == nil {
		return st, fmt.Errorf("no pair in /status")
	}
	return st, nil
}

func (p *pairLab) post(t *testing.T, n *labNode, path string) {
	t.Helper()
	resp, err := p.lab.httpClient("cli").Post("http://"+n.addr+":9025"+path, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s on %s: %s %s", path, n.name, resp.Status, b)
	}
}

func (p *pairLab) waitStatus(n *labNode, d time.Duration, what string, cond func(admin.Status) bool) {
	p.t.Helper()
	waitFor(p.t, d, what, func() bool {
		st, err := p.tryStatus(n)
		return err == nil && cond(st)
	})
}

// waitSettled waits until every running node hears the other and exactly
// one of them is active.
func (p *pairLab) waitSettled() {
	p.t.Helper()
	waitFor(p.t, 10*time.Second, "the pair to settle (one active, each hearing the other)", func() bool {
		active := 0
		for _, n := range p.nodes {
			st, err := p.tryStatus(n)
			if err != nil || !st.Peer.Alive || !st.Pair.LinkUp || st.Pair.Applied != st.Role {
				return false
			}
			if st.Pair.Applied == "active" {
				active++
			}
		}
		return active == 1
	})
}

// roles returns the active node and the standby one.
func (p *pairLab) roles() (active, standby *labNode) {
	p.t.Helper()
	if p.status(p.t, p.nodes[0]).Pair.Applied == "active" {
		return p.nodes[0], p.nodes[1]
	}
	return p.nodes[1], p.nodes[0]
}

// greeting gets an IMAP greeting through the virtual address and then
// asks who answers there (the SMTP greeting names the node); it returns
// the node's host name, or what went wrong.
func (p *pairLab) greeting() string {
	line := p.greetingLine(pairIMAPAddr)
	if !strings.HasPrefix(line, "* OK") {
		return "imap: " + line
	}
	line = p.greetingLine(pairSMTPAddr)
	for _, n := range p.nodes {
		if strings.HasPrefix(line, "220 "+n.host+" ") {
			return n.host
		}
	}
	return "smtp: " + line
}

func (p *pairLab) greetingLine(addr string) string {
	c, err := p.lab.dial("cli", addr, 200*time.Millisecond)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read: " + err.Error()
	}
	return line
}

// firstGreeting tries the virtual address every 10ms, each try on its own
// with short timeouts (a SYN lost to a dead node must not cost the
// kernel's one-second retransmission), and returns the time from t0 to
// the first greeting from want. It fails the test after 5s.
func (p *pairLab) firstGreeting(t *testing.T, t0 time.Time, want *labNode) time.Duration {
	t.Helper()
	return p.firstOK(t, t0, func() bool { return p.greeting() == want.host }, func() string {
		return fmt.Sprintf("no greeting from %s within 5s (last: %q)", want.name, p.greeting())
	})
}

// firstOK runs try every 10ms, each on its own goroutine, and returns the
// time from t0 to the first success; after 5s it fails with why().
func (p *pairLab) firstOK(t *testing.T, t0 time.Time, try func() bool, why func() string) time.Duration {
	t.Helper()
	got := make(chan time.Time, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case at := <-got:
			return at.Sub(t0)
		case <-ctx.Done():
			t.Fatal(why())
		case <-tick.C:
			wg.Go(func() {
				if try() {
					select {
					case got <- time.Now():
					default:
					}
				}
			})
		}
	}
}

// report logs the median, p90 and worst of ds and fails the test when
// the goal is missed: median at most 0.5s, none over 1s.
func report(t *testing.T, what string, ds []time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	med, p90 := s[len(s)/2], s[min(len(s)-1, len(s)*9/10)]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	all := make([]string, len(ds))
	for i, d := range ds {
		all[i] = r(d)
	}
	t.Logf("%s -> first greeting via the VIP, %d runs: median %s, p90 %s, max %s (%s)",
		what, len(s), r(med), r(p90), r(s[len(s)-1]), strings.Join(all, " "))
	if med > 500*time.Millisecond || s[len(s)-1] > time.Second {
		t.Errorf("%s: median %s (goal 0.5s), max %s (goal at most 1s)", what, r(med), r(s[len(s)-1]))
	}
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}
