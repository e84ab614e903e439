package testkit

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Redis is a redis-server (the Debian package) that a test started on
// 127.0.0.1, with a directory and a port of its own and no persistence:
// stopped and started again, it comes back empty, as a store that lost
// its data does.
type Redis struct {
	Addr string
	tb   testing.TB
	dir  string
	port string
	cmd  *exec.Cmd
	done chan struct{}
}

// RedisServerPath returns the redis-server binary, or "" when it is not
// installed.
func RedisServerPath() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// StartRedis starts a redis-server for the test and stops it when the test
// ends. Without one installed the test is skipped, or fails when CI=true
// (integration/redisstore/install.sh installs it there).
func StartRedis(tb testing.TB) *Redis {
	tb.Helper()
	if RedisServerPath() == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatal("redis-server is not installed; integration/redisstore/install.sh installs it")
		}
		tb.Skip("redis-server is not installed (apt-get install redis-server, or integration/redisstore/install.sh)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	r := &Redis{Addr: "127.0.0.1:" + port, tb: tb, dir: tb.TempDir(), port: port}
	r.Start()
	tb.Cleanup(r.Stop)
	return r
}

// Start starts the server (again, on the same port) and waits until it
// answers PING.
func (r *Redis) Start() {
	r.tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.cmd = exec.Command(RedisServerPath(), "--port", r.port, "--bind", "127.0.0.1", "--dir", r.dir,
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(r.dir, "redis.log"))
		if err := r.cmd.Start(); err != nil {
			r.tb.Fatalf("start redis-server: %v", err)
		}
		r.done = make(chan struct{})
		go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(r.cmd, r.done)
		if Eventually(5*time.Second, 20*time.Millisecond, r.ping) {
			return
		}
		r.Stop() // the port may be briefly taken after a stop: try again
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.tb.Fatalf("redis-server on %s does not answer:\n%s", r.Addr, log)
		}
	}
}

// Stop stops the server (SIGKILL: no goodbye) and waits until it is gone.
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// CPU is the CPU time (user and system) the running server has used, read
// from /proc; 0 where that cannot be read.
func (r *Redis) CPU() time.Duration {
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which is in parentheses): utime and
	// stime are the 12th and 13th, in clock ticks (100 per second on Linux).
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (r *Redis) ping() bool {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprint(c, "PING\r\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}
