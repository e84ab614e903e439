package integration

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
		// What an operator sees of it.
		var out bytes.Buffer
		ac := &admin.Client{Addr: n2.addr + ":9025", HTTP: p.lab.httpClient("cli")}
		if err := admin.Ctl(context.Background(), ac, []string{"status"}, &out); err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`vip 192\.0\.2\.100/24 2001:db8::100/64 on eth0 \(link up: true\), \d+ announcements, \d+ takeovers, [1-9]\d* conflicts`).MatchString(out.String()) {
			t.Errorf("ctl status of n2:\n%s", out.String())
		}
		for n, want := range map[*labNode]string{n1: "mailproxy_peer_active 1", n2: "mailproxy_peer_active 0"} {
			if m := p.get(t, n, "/metrics"); !strings.Contains(m, want+"\n") || !strings.Contains(m, "mailproxy_peer_conflicts_total") {
				t.Errorf("%s /metrics lacks %q", n.name, want)
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
	greetings, slow, wrong := 0, 0, 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			switch who := p.greeting(); who {
			case a.host:
				greetings++
			case s.host:
				wrong++
				t.Logf("greeting while saturated from the standby %s", s.name)
			default:
				slow++ // the client itself is starved too: a timeout is not a takeover
				t.Logf("greeting while saturated: %q", who)
			}
		}
	}
	wg.Wait()
	after, afterS := p.status(t, a).Pair, p.status(t, s).Pair
	t.Logf("saturated for %v: %d greetings from %s, %d from %s, %d timed out; takeovers %d -> %d (standby), conflicts %d -> %d",
		soak, greetings, a.name, wrong, s.name, slow, beforeS.Takeovers, afterS.Takeovers, before.Conflicts, after.Conflicts)
	if afterS.Takeovers != beforeS.Takeovers || after.Applied != "active" || afterS.Applied != "standby" || wrong > 0 {
		t.Errorf("a takeover happened under load: active %+v, standby %+v", after, afterS)
	}
	if greetings == 0 {
		t.Error("no greeting at all under load")
	}
}
