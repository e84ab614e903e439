// Command client is the load of bench/compare: the same IMAP client work
// against any address (the backend itself, or a proxy in front of it),
// measured from outside the proxy process through /proc. Phases:
//
//	idle   -idle-n logged-in sessions held open: growth of the proxy's RSS
//	       and descriptors per session (read before and after from
//	       /proc/PID/status and /proc/PID/fd)
//	fetch  one logged-in session FETCHes a -fetch-size message -fetch-n
//	       times: MB/s, and CPU per op of the proxy, the backend and the
//	       client
//	login  -login-n times connect, greeting, LOGIN, LOGOUT with go-imap's
//	       imapclient, -login-conc at once: logins/s and CPU per login
//
// CPU time comes from utime+stime in /proc/PID/stat (all threads, 10 ms
// ticks), summed over each -proxy-pids process and its children (nginx's
// workers). One line per phase, "RESULT key=value ...", for run.sh.
// Everything is bounded: every read and write has a deadline, and the whole
// run ends after -deadline.
package main

import (
	"flag"
	"fmt"
	"log"
	"mailproxy/internal/benchkit"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

const ioTimeout = 10 * time.Second

// clkTck is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clkTck = 100

var (
	addr       = flag.String("addr", "", "IMAP address to load (loopback)")
	target     = flag.String("target", "", "label for the results")
	round      = flag.String("round", "", "label for the results")
	phases     = flag.String("phases", "idle,fetch,login", "phases to run, in this order")
	proxyPids  = flag.String("proxy-pids", "", "comma-separated PIDs of the proxy (children included)")
	auxPids    = flag.String("aux-pids", "", "comma-separated PIDs of helpers the proxy needs (nginx's auth_http)")
	backendPid = flag.Int("backend-pid", 0, "PID of the backend")
	fetchN     = flag.Int("fetch-n", 1000, "FETCHes in the fetch phase")
	fetchSize  = flag.Int("fetch-size", 1<<20, "size of the message the backend serves")
	loginN     = flag.Int("login-n", 4000, "logins in the login phase")
	loginConc  = flag.Int("login-conc", 16, "concurrent clients in the login phase")
	idleN      = flag.Int("idle-n", 2000, "sessions held open in the idle phase")
	idleWait   = flag.Duration("idle-wait", 3*time.Second, "wait after the last session is open before measuring")
	deadline   = flag.Duration("deadline", 3*time.Minute, "give up after this long")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("client: ")
	if *addr == "" {
		log.Fatal("-addr is required")
	}
	time.AfterFunc(*deadline, func() { log.Fatalf("%s: deadline of %v passed", *target, *deadline) })
	for _, p := range strings.Split(*phases, ",") {
		var err error
		switch p {
		case "idle":
			err = idlePhase()
		case "fetch":
			err = fetchPhase()
		case "login":
			err = loginPhase()
		default:
			err = fmt.Errorf("unknown phase %q", p)
		}
		if err != nil {
			log.Fatalf("%s %s: %v", *target, p, err)
		}
	}
}

// procs are the processes one figure is summed over.
type procs struct{ pids []int }

func parsePids(s string) procs {
	var p procs
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			p.pids = append(p.pids, n)
		}
	}
	return p
}

// all is the processes and their children, found now.
func (p procs) all() []int {
	if len(p.pids) == 0 {
		return nil
	}
	out := append([]int(nil), p.pids...)
	parent := map[int]bool{}
	for _, pid := range p.pids {
		parent[pid] = true
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || parent[pid] {
			continue
		}
		if f := statFields(pid); len(f) > 1 {
			if ppid, _ := strconv.Atoi(f[1]); parent[ppid] {
				out = append(out, pid)
			}
		}
	}
	return out
}

// statFields is /proc/PID/stat after the command name: field 3 (state)
// is index 0.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// cpu is user + system time of the processes.
func (p procs) cpu() time.Duration {
	var ticks int64
	for _, pid := range p.all() {
		if f := statFields(pid); len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / clkTck
}

// rss is VmRSS of the processes, in bytes, and their open descriptors.
func (p procs) rss() (rss int64, fds int) {
	for _, pid := range p.all() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				rss += kb << 10
			}
		}
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		fds += len(ents)
	}
	return rss, fds
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter takes the CPU time of everyone involved at the start of a phase.
type cpuMeter struct {
	proxy, aux, backend procs
	p0, a0, b0, c0      time.Duration
	t0                  time.Time
}

func startMeter() *cpuMeter {
	m := &cpuMeter{proxy: parsePids(*proxyPids), aux: parsePids(*auxPids), backend: procs{[]int{*backendPid}}}
	m.p0, m.a0, m.b0, m.c0, m.t0 = m.proxy.cpu(), m.aux.cpu(), m.backend.cpu(), selfCPU(), time.Now()
	return m
}

// result prints the phase's line: wall time, rate and CPU µs per op.
func (m *cpuMeter) result(phase string, ops int, rateName string, perOpUnits float64) {
	wall := time.Since(m.t0)
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/float64(ops)) }
	fmt.Printf("RESULT target=%s round=%s phase=%s ops=%d wall_s=%.3f %s=%.1f proxy_cpu_us=%s aux_cpu_us=%s backend_cpu_us=%s client_cpu_us=%s\n",
		*target, *round, phase, ops, wall.Seconds(), rateName, float64(ops)*perOpUnits/wall.Seconds(),
		us(m.proxy.cpu()-m.p0), us(m.aux.cpu()-m.a0), us(m.backend.cpu()-m.b0), us(selfCPU()-m.c0))
}

func fetchPhase() error {
	c, err := benchkit.DialRaw(*addr, "bench", "pw", ioTimeout)
	if err != nil {
		return err
	}
	defer c.Conn.Close()
	for range 5 { // warm up
		if err := c.Fetch(*fetchSize); err != nil {
			return err
		}
	}
	m := startMeter()
	for range *fetchN {
		if err := c.Fetch(*fetchSize); err != nil {
			return err
		}
	}
	m.result("fetch", *fetchN, "MBps", float64(*fetchSize)/1e6)
	return nil
}

func loginOnce() error {
	conn, err := net.DialTimeout("tcp", *addr, ioTimeout)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login("bench", "pw").Wait(); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	return c.Logout().Wait()
}

// parallel runs f n times on conc goroutines and returns the first error.
func parallel(n, conc int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func loginPhase() error {
	if err := parallel(*loginConc, *loginConc, func(int) error { return loginOnce() }); err != nil { // warm up
		return err
	}
	m := startMeter()
	if err := parallel(*loginN, *loginConc, func(int) error { return loginOnce() }); err != nil {
		return err
	}
	m.result("login", *loginN, "logins_per_s", 1)
	return nil
}

func idlePhase() error {
	proxy := parsePids(*proxyPids)
	if err := parallel(16, 16, func(int) error { // warm up, then let it settle
		c, err := benchkit.DialRaw(*addr, "bench", "pw", ioTimeout)
		if err == nil {
			c.Conn.Close()
		}
		return err
	}); err != nil {
		return err
	}
	time.Sleep(*idleWait)
	rss0, fds0 := proxy.rss()
	brss0, _ := procs{[]int{*backendPid}}.rss()
	conns := make([]net.Conn, *idleN)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	t0 := time.Now()
	err := parallel(*idleN, 16, func(i int) error {
		c, err := benchkit.DialRaw(*addr, "bench", "pw", ioTimeout)
		if err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
		conns[i] = c.Conn
		if err := c.Command("n", "NOOP"); err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
		c.Conn.SetDeadline(time.Time{})
		return nil
	})
	if err != nil {
		return err
	}
	open := time.Since(t0)
	time.Sleep(*idleWait)
	rss1, fds1 := proxy.rss()
	brss1, _ := procs{[]int{*backendPid}}.rss()
	n := float64(*idleN)
	fmt.Printf("RESULT target=%s round=%s phase=idle ops=%d open_s=%.3f rss_before_kib=%d rss_after_kib=%d rss_b_per_session=%.0f fds_per_session=%.2f backend_rss_b_per_session=%.0f\n",
		*target, *round, *idleN, open.Seconds(), rss0>>10, rss1>>10, float64(rss1-rss0)/n, float64(fds1-fds0)/n, float64(brss1-brss0)/n)
	return nil
}
