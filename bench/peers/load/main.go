// Command load is the client of bench/peers.sh: one workload against one
// address (a backend itself, or a proxy in front of it), with raw protocol
// text so that the client costs little and the same whatever it talks
// to. One line per run, "RESULT key=value ...", for the script.
//
//	-mode imap-login  connect, greeting, LOGIN, LOGOUT (-tls: implicit TLS;
//	                  -starttls: STARTTLS first, for a backend without
//	                  implicit TLS)
//	-mode pop3        connect, greeting, USER, PASS, STAT, QUIT
//	-mode smtp        connect, EHLO, MAIL, RCPT, DATA of -size bytes, QUIT
//	-mode fetch       one session FETCHes message 1 -n times (BODY[])
//	-mode idle        -n sessions log in, send a NOOP and stay; after
//	                  -idle-wait the RSS of -pids (and all their
//	                  descendants) is compared with the RSS before
//	-mode soak        -n sessions log in (every other one over implicit
//	                  TLS to -tls-addr) and enter IDLE; after -idle-wait
//	                  the RSS is read, then the CPU over -hold; then every
//	                  session ends its IDLE (DONE, timed to the tagged
//	                  OK: the first reply of a parked session) and logs out
//
// -n operations, -conc at a time; users are -user0..(-user0 + -users - 1)
// with -password. CPU per op of -pids (and descendants) from
// /proc/PID/stat. Everything is bounded by -deadline and I/O timeouts.
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const ioTimeout = 10 * time.Second

var (
	mode      = flag.String("mode", "", "imap-login | pop3 | smtp | fetch | idle")
	addr      = flag.String("addr", "", "address to load (loopback); several, comma-separated: user N goes to the (N mod count)th")
	useTLS    = flag.Bool("tls", false, "implicit TLS")
	startTLS  = flag.Bool("starttls", false, "IMAP STARTTLS before the login")
	n         = flag.Int("n", 1000, "operations (sessions in idle mode)")
	conc      = flag.Int("conc", 8, "operations at a time")
	userPfx   = flag.String("user", "user", "user name prefix")
	user0     = flag.Int("user0", 0, "first user number")
	users     = flag.Int("users", 100, "how many users to spread over")
	password  = flag.String("password", "pw", "every user's password")
	rcptDom   = flag.String("domain", "example.test", "SMTP recipient domain")
	size      = flag.Int("size", 10<<10, "SMTP message size, bytes")
	perConn   = flag.Int("per-session", 1, "SMTP messages per session (each op is one message)")
	pids      = flag.String("pids", "", "comma-separated PIDs of the proxy under test (descendants included)")
	idleWait  = flag.Duration("idle-wait", 3*time.Second, "idle mode: wait after the last session before measuring")
	cpuWindow = flag.Duration("cpu-window", 0, "idle mode: how long the idle CPU is measured; default -idle-wait")
	deadline  = flag.Duration("deadline", 3*time.Minute, "give up after this long")
	label     = flag.String("label", "", "copied into the RESULT line")
	tlsAddr   = flag.String("tls-addr", "", "soak mode: implicit-TLS address for every other session")
	hold      = flag.Duration("hold", 60*time.Second, "soak mode: how long the sessions stay in IDLE after -idle-wait")
	memDump   = flag.Bool("memdump", false, "idle mode: signal -pids as their RSS is read, SIGUSR1 before and after, SIGUSR2 after (a mailproxy built with -tags memdump writes its memory classes, and a heap profile)")
	tlsConfig = &tls.Config{InsecureSkipVerify: true} // loopback benchmark against throwaway certificates
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("load: ")
	time.AfterFunc(*deadline, func() { log.Fatalf("%s %s: deadline of %v passed", *label, *mode, *deadline) })
	var op func(i int) (int64, error)
	switch *mode {
	case "imap-login":
		op = imapLogin
	case "pop3":
		op = pop3Session
	case "smtp":
		msg := message(*size)
		op = func(i int) (int64, error) { return smtpMessage(i, msg) }
	case "fetch":
		fetchRun()
		return
	case "idle":
		idleRun()
		return
	case "soak":
		soakRun()
		return
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
	cpu0, cores0 := cpuTicks(), coreBusy()
	start := time.Now()
	var next, bytes atomic.Int64
	var wg sync.WaitGroup
	var errs atomic.Int64
	var firstErr atomic.Value
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				b, err := op(i)
				if *mode == "smtp" && *perConn > 1 {
					next.Add(int64(*perConn - 1)) // each op is one message
				}
				bytes.Add(b)
				if err != nil {
					if errs.Add(1) == 1 {
						firstErr.Store(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	cpu, cores := cpuTicks()-cpu0, coreBusy().minus(cores0)
	if e := errs.Load(); e > 0 {
		log.Printf("%s %s: %d of %d failed, first: %v", *label, *mode, e, *n, firstErr.Load())
		if e > int64(*n/100) {
			os.Exit(1)
		}
	}
	fmt.Printf("RESULT %s mode=%s ops=%d secs=%.3f rate=%.1f proxy_cpu_us=%.1f %s\n",
		*label, *mode, *n, el.Seconds(), float64(*n)/el.Seconds(), float64(cpu)*1e4/float64(*n), cores.perOp(float64(*n)))
}

// conn is one client connection with a line reader.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

// dial connects to the address of user i.
func dial(i int) (*conn, error) {
	addrs := strings.Split(*addr, ",")
	c, err := net.DialTimeout("tcp", addrs[(*user0+i%*users)%len(addrs)], ioTimeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	if *useTLS {
		tc := tls.Client(c, tlsConfig)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 4096)}, nil
}

// expect reads lines until one starts with prefix (or, with untagged,
// skips lines that start with "* " or a continuation "NNN-").
func (c *conn) expect(prefix string) error {
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("waiting for %q: %w (got %q)", prefix, err, line)
		}
		if strings.HasPrefix(line, prefix) {
			return nil
		}
		if strings.HasPrefix(line, "* ") || len(line) > 3 && line[3] == '-' {
			continue
		}
		return fmt.Errorf("waiting for %q, got %q", prefix, strings.TrimSpace(line))
	}
}

func (c *conn) send(s string) error {
	_, err := io.WriteString(c.c, s)
	return err
}

// say sends s and expects a reply starting with prefix.
func (c *conn) say(s, prefix string) error {
	if err := c.send(s); err != nil {
		return err
	}
	return c.expect(prefix)
}

func user(i int) string { return *userPfx + strconv.Itoa(*user0+i%*users) }

// imapLogin is one IMAP session: greeting, LOGIN, LOGOUT.
func imapLogin(i int) (int64, error) {
	c, err := imapOpen(i)
	if err != nil {
		return 0, err
	}
	defer c.c.Close()
	return 0, c.say("b LOGOUT\r\n", "b OK")
}

// imapOpen connects and logs in.
func imapOpen(i int) (*conn, error) {
	c, err := dial(i)
	if err != nil {
		return nil, err
	}
	if err := c.expect("* OK"); err != nil {
		c.c.Close()
		return nil, err
	}
	if *startTLS {
		if err := c.say("s STARTTLS\r\n", "s OK"); err != nil {
			c.c.Close()
			return nil, err
		}
		tc := tls.Client(c.c, tlsConfig)
		if err := tc.Handshake(); err != nil {
			c.c.Close()
			return nil, err
		}
		c.c, c.r = tc, bufio.NewReaderSize(tc, 4096)
	}
	if err := c.say("a LOGIN "+user(i)+" "+*password+"\r\n", "a OK"); err != nil {
		c.c.Close()
		return nil, err
	}
	return c, nil
}

// pop3Session is one POP3 session: greeting, USER, PASS, STAT, QUIT.
func pop3Session(i int) (int64, error) {
	c, err := dial(i)
	if err != nil {
		return 0, err
	}
	defer c.c.Close()
	for _, step := range [][2]string{{"", "+OK"}, {"USER " + user(i) + "\r\n", "+OK"}, {"PASS " + *password + "\r\n", "+OK"}, {"STAT\r\n", "+OK"}, {"QUIT\r\n", "+OK"}} {
		if err := c.say(step[0], step[1]); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// message is a mail of exactly size bytes (at least 200), dot-safe.
func message(size int) string {
	var b strings.Builder
	b.WriteString("From: load@example.test\r\nTo: someone@example.test\r\nSubject: load\r\n\r\n")
	line := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("x", max(size-b.Len()-2, 0)) + "\r\n")
	return b.String()
}

// smtpMessage sends one message in its own session.
func smtpMessage(i int, msg string) (int64, error) {
	c, err := dial(i)
	if err != nil {
		return 0, err
	}
	defer c.c.Close()
	steps := [][2]string{{"", "220 "}, {"EHLO load.example.test\r\n", "250 "}}
	for range *perConn {
		steps = append(steps, [2]string{"MAIL FROM:<load@example.test>\r\n", "250"}, [2]string{"RCPT TO:<" + user(i) + "@" + *rcptDom + ">\r\n", "250"},
			[2]string{"DATA\r\n", "354"}, [2]string{msg + ".\r\n", "250"})
	}
	steps = append(steps, [2]string{"QUIT\r\n", "221"})
	for _, s := range steps {
		if err := c.say(s[0], s[1]); err != nil {
			return 0, err
		}
	}
	return int64(len(msg) * *perConn), nil
}

// fetchRun fetches message 1 of the first user's INBOX -n times.
func fetchRun() {
	c, err := imapOpen(0)
	if err != nil {
		log.Fatalf("%s fetch: %v", *label, err)
	}
	defer c.c.Close()
	if err := c.say("s SELECT INBOX\r\n", "s OK"); err != nil {
		log.Fatalf("%s fetch: %v", *label, err)
	}
	buf := make([]byte, 256<<10)
	var total int64
	cpu0, cores0, sw0 := cpuTicks(), coreBusy(), switches()
	start := time.Now()
	for range *n {
		c.c.SetDeadline(time.Now().Add(ioTimeout))
		k, err := fetchOnce(c, buf)
		if err != nil {
			log.Fatalf("%s fetch: %v", *label, err)
		}
		total += k
	}
	el := time.Since(start)
	cpu, cores := cpuTicks()-cpu0, coreBusy().minus(cores0)
	mib := float64(total) / (1 << 20)
	fmt.Printf("RESULT %s mode=fetch ops=%d secs=%.3f rate=%.1f mbps=%.1f proxy_cpu_us_per_mib=%.1f %s reads_per_mib=%.1f ctxt_per_mib=%.0f\n",
		*label, *n, el.Seconds(), float64(*n)/el.Seconds(), float64(total)/el.Seconds()/1e6, float64(cpu)*1e4/mib, cores.perOp(mib),
		float64(fetchReads)/mib, float64(switches()-sw0)/mib)
}

// fetchReads counts the reads of message bytes: how many pieces the
// message arrived in, each a wake-up of this client.
var fetchReads int64

// switches is the machine's context switches so far (/proc/stat ctxt).
func switches() int64 {
	b, _ := os.ReadFile("/proc/stat")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ctxt "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func fetchOnce(c *conn, buf []byte) (int64, error) {
	if err := c.send("f FETCH 1 BODY.PEEK[]\r\n"); err != nil {
		return 0, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	open := strings.LastIndexByte(line, '{')
	if open < 0 {
		return 0, fmt.Errorf("unexpected FETCH line %q", line)
	}
	size, err := strconv.Atoi(strings.TrimSuffix(strings.TrimRight(line, "\r\n"), "}")[open+1:])
	if err != nil {
		return 0, fmt.Errorf("unexpected FETCH line %q", line)
	}
	for left := size; left > 0; {
		k, err := c.r.Read(buf[:min(left, len(buf))])
		if err != nil {
			return 0, err
		}
		left -= k
		fetchReads++
	}
	// The rest of the FETCH response, ")", then the tagged OK.
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if strings.HasPrefix(line, "f ") {
			if !strings.HasPrefix(line, "f OK") {
				return 0, fmt.Errorf("FETCH: %q", strings.TrimSpace(line))
			}
			return int64(size), nil
		}
	}
}

// idleRun holds -n sessions and measures the proxy's RSS and descriptors
// per session.
func idleRun() {
	before, fds0 := rss()
	fileBefore := rssFile()
	signalTree(syscall.SIGUSR1)
	conns := make([]net.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || failed.Load() != nil {
					return
				}
				c, err := imapOpen(i)
				if err == nil {
					err = c.say("n NOOP\r\n", "n OK")
				}
				if err != nil {
					failed.Store(err)
					return
				}
				c.c.SetDeadline(time.Time{})
				mu.Lock()
				conns = append(conns, c.c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		log.Fatalf("%s idle: %v", *label, err)
	}
	time.Sleep(*idleWait) // the proxy's own timers (parking, pipes) run out
	after, fds1 := rss()
	fileAfter := rssFile()
	signalTree(syscall.SIGUSR1, syscall.SIGUSR2)
	cpu0, t0 := cpuTicks(), time.Now()
	if *cpuWindow == 0 {
		*cpuWindow = *idleWait
	}
	time.Sleep(*cpuWindow) // CPU while idle
	idleCPU := float64(cpuTicks()-cpu0) * 1e4 / float64(time.Since(t0).Microseconds()) * 100
	fmt.Printf("RESULT %s mode=idle%s sessions=%d rss_before_kib=%d rss_after_kib=%d rss_per_session_b=%.0f rss_file_growth_kib=%d fds_per_session=%.2f idle_cpu_pct=%.3f\n",
		*label, map[bool]string{true: "-tls"}[*useTLS], *n, before, after, float64(after-before)*1024/float64(*n), fileAfter-fileBefore, float64(fds1-fds0)/float64(*n), idleCPU)
}

// signalTree sends sigs to -pids (not their descendants) with -memdump.
func signalTree(sigs ...syscall.Signal) {
	if !*memDump {
		return
	}
	for _, s := range strings.Split(*pids, ",") {
		if p, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			for _, sig := range sigs {
				syscall.Kill(p, sig)
			}
		}
	}
}

// tree is -pids and all their descendants, read from /proc now.
func tree() []int {
	var roots []int
	for _, s := range strings.Split(*pids, ",") {
		if p, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			roots = append(roots, p)
		}
	}
	parent := map[int]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		pid, _ := strconv.Atoi(strings.Split(d, "/")[2])
		if len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	for changed := true; changed; {
		changed = false
		for p, pp := range parent {
			if in[pp] && !in[p] {
				in[p], changed = true, true
			}
		}
	}
	var out []int
	for p := range in {
		out = append(out, p)
	}
	return out
}

// cpuTicks is utime+stime of the tree, in clock ticks (10 ms).
func cpuTicks() int64 {
	var sum int64
	for _, p := range tree() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			sum += u + s
		}
	}
	return sum
}

// busy is the busy time of each core (all that is not idle or iowait in
// /proc/stat), in clock ticks: what the whole machine, kernel work such as
// loopback's softirqs included, spent on each core. The proxy runs on core
// 0, the backends and this client on core 1, so core 1's busy time per op
// is the work a proxy leaves to (or takes off) the backends' core.
type busy []int64

func coreBusy() busy {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil
	}
	var out busy
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var sum int64
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			x, _ := strconv.ParseInt(v, 10, 64)
			sum += x
		}
		out = append(out, sum)
	}
	return out
}

func (b busy) minus(a busy) busy {
	if len(a) != len(b) {
		return nil
	}
	out := make(busy, len(b))
	for i := range b {
		out[i] = b[i] - a[i]
	}
	return out
}

// perOp is "core0_us=... core1_us=...": busy µs per op of each core.
func (b busy) perOp(ops float64) string {
	var s []string
	for i, t := range b {
		s = append(s, fmt.Sprintf("core%d_us=%.0f", i, float64(t)*1e4/ops))
	}
	return strings.Join(s, " ")
}

// rss is the tree's VmRSS in KiB and its open descriptors.
func rss() (int64, int) {
	var kib int64
	fds := 0
	for _, p := range tree() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				k, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				kib += k
			}
		}
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p)); err == nil {
			fds += len(ents)
		}
	}
	return kib, fds
}

// rssFile is the part of the tree's RSS that maps files (RssFile: the
// binary's code and data as first touched, shared and reclaimable), in KiB.
func rssFile() int64 {
	var kib int64
	for _, p := range tree() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
				k, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				kib += k
			}
		}
	}
	return kib
}

// soakRun holds -n sessions in IDLE, half of them over TLS, and measures
// the proxy's memory and CPU per session, then the first reply of each.
func soakRun() {
	before, fds0 := rss()
	cpuStart := cpuTicks()
	conns := make([]*conn, *n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	plain := *addr
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || failed.Load() != nil {
					return
				}
				c, err := soakOpen(i, plain)
				if err != nil {
					failed.Store(fmt.Errorf("session %d: %w", i, err))
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.c.Close()
			}
		}
	}()
	if err := failed.Load(); err != nil {
		log.Fatalf("%s soak: %v", *label, err)
	}
	opened := time.Since(start)
	loginCPU := cpuTicks() - cpuStart
	time.Sleep(*idleWait)
	after, fds1 := rss()
	cpu0, t0 := cpuTicks(), time.Now()
	time.Sleep(*hold)
	heldFor := time.Since(t0)
	idleCPU := float64(cpuTicks()-cpu0) * 1e4 / float64(heldFor.Microseconds()) * 100
	held, _ := rss()
	// The first reply of every session, parked since idle-wait.
	lat := make([]time.Duration, *n)
	for i, c := range conns {
		c.c.SetDeadline(time.Now().Add(ioTimeout))
		t := time.Now()
		if err := c.say("DONE\r\n", "i OK"); err != nil {
			log.Fatalf("%s soak: session %d after IDLE: %v", *label, i, err)
		}
		lat[i] = time.Since(t)
		if err := c.say("z LOGOUT\r\n", "z OK"); err != nil {
			log.Fatalf("%s soak: session %d LOGOUT: %v", *label, i, err)
		}
	}
	sortDurations(lat)
	fmt.Printf("RESULT %s mode=soak sessions=%d tls=%d open_secs=%.1f login_cpu_us=%.0f rss_before_kib=%d rss_parked_kib=%d rss_held_kib=%d rss_per_session_b=%.0f fds_per_session=%.2f hold_secs=%.0f idle_cpu_pct=%.3f idle_cpu_us_per_session_s=%.4f done_ok_us_p50=%d done_ok_us_p99=%d done_ok_us_max=%d\n",
		*label, *n, *n/2, opened.Seconds(), float64(loginCPU)*1e4/float64(*n), before, after, held,
		float64(after-before)*1024/float64(*n), float64(fds1-fds0)/float64(*n), heldFor.Seconds(), idleCPU,
		idleCPU/100*1e6/float64(*n), lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds(), lat[len(lat)-1].Microseconds())
}

// soakOpen logs session i in (over TLS for odd i) and starts IDLE.
func soakOpen(i int, plain string) (*conn, error) {
	a, secure := plain, false
	if i%2 == 1 && *tlsAddr != "" {
		a, secure = *tlsAddr, true
	}
	raw, err := net.DialTimeout("tcp", a, ioTimeout)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(ioTimeout))
	var nc net.Conn = raw
	if secure {
		tc := tls.Client(raw, tlsConfig)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		nc = tc
	}
	c := &conn{c: nc, r: bufio.NewReaderSize(nc, 512)}
	err = c.expect("* OK")
	if err == nil {
		err = c.say("a LOGIN "+user(i)+" "+*password+"\r\n", "a OK")
	}
	if err == nil {
		err = c.say("i IDLE\r\n", "+ ")
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return c, nil
}

func sortDurations(d []time.Duration) {
	slices.Sort(d)
}
