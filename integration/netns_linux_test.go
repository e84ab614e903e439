package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// lab is a small network in namespaces of its own: a bridge in a "lan"
// namespace and one namespace per host, each joined to the bridge by a
// veth pair (eth0 inside the host), with documentation addresses only. Its
// names carry the test process's id, so parallel runs do not collide, and
// everything is removed when the test ends, failed or not.
type lab struct {
	t      *testing.T
	prefix string
	ns     map[string]netns.NsHandle
}

// needNetns skips the test unless it runs as root where `ip netns` works.
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespace tests need root (CI runs them as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is not installed; integration/realmail/install.sh installs it")
	}
	name := fmt.Sprintf("mpprobe%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipped: ip netns add does not work here: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "del", name).Run()
}

func newLab(t *testing.T) *lab {
	l := &lab{t: t, prefix: fmt.Sprintf("mpf%d-", os.Getpid()), ns: map[string]netns.NsHandle{}}
	t.Cleanup(l.remove)
	l.addNS("lan")
	l.ip("lan", "link", "add", "br0", "type", "bridge")
	l.ip("lan", "link", "set", "br0", "up")
	return l
}

func (l *lab) name(ns string) string { return l.prefix + ns }

func (l *lab) addNS(ns string) {
	l.t.Helper()
	if out, err := exec.Command("ip", "netns", "add", l.name(ns)).CombinedOutput(); err != nil {
		l.t.Fatalf("ip netns add %s: %v: %s", l.name(ns), err, out)
	}
	h, err := netns.GetFromName(l.name(ns))
	if err != nil {
		l.t.Fatal(err)
	}
	l.ns[ns] = h
	l.ip(ns, "link", "set", "lo", "up")
}

// host adds a namespace joined to the bridge with addr (CIDR) on eth0;
// the bridge's end of its cable is "v-"+ns in the lan namespace.
// Each address is added without duplicate address detection, and so is
// the IPv6 link-local one, so every address is usable at once.
func (l *lab) host(ns string, addrs ...string) {
	l.addNS(ns)
	l.ip("lan", "link", "add", "v-"+ns, "type", "veth", "peer", "name", "eth0", "netns", l.name(ns))
	l.ip("lan", "link", "set", "v-"+ns, "master", "br0", "up")
	if out, err := l.command(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0").CombinedOutput(); err != nil {
		l.t.Fatalf("sysctl in %s: %v: %s", ns, err, out)
	}
	for _, a := range addrs {
		if strings.Contains(a, ":") {
			l.ip(ns, "addr", "add", a, "dev", "eth0", "nodad")
		} else {
			l.ip(ns, "addr", "add", a, "dev", "eth0")
		}
	}
	l.ip(ns, "link", "set", "eth0", "up")
}

// cable joins two hosts directly: ifname in both, with the addresses given.
func (l *lab) cable(a, aAddr, b, bAddr, ifname string) {
	l.ip(a, "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", l.name(b))
	l.ip(a, "addr", "add", aAddr, "dev", ifname)
	l.ip(b, "addr", "add", bAddr, "dev", ifname)
	l.ip(a, "link", "set", ifname, "up")
	l.ip(b, "link", "set", ifname, "up")
}

// ip runs `ip -n <ns> args...` and fails the test if it fails.
func (l *lab) ip(ns string, args ...string) {
	l.t.Helper()
	args = append([]string{"-n", l.name(ns)}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// command builds a command that runs in ns.
func (l *lab) command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.name(ns), name}, args...)...)
}

// in runs f on a thread that has entered ns; sockets f opens live there.
// The thread is never unlocked, so it ends with the goroutine and the
// namespace never leaks to other goroutines.
func (l *lab) in(ns string, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(l.ns[ns]); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

func (l *lab) dial(ns, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if nerr := l.in(ns, func() { c, err = net.DialTimeout("tcp", addr, timeout) }); nerr != nil {
		return nil, nerr
	}
	return c, err
}

func (l *lab) listen(ns, addr string) net.Listener {
	l.t.Helper()
	var ln net.Listener
	var err error
	if nerr := l.in(ns, func() { ln, err = net.Listen("tcp", addr) }); nerr != nil {
		err = nerr
	}
	if err != nil {
		l.t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	return ln
}

// httpClient makes HTTP calls from ns.
func (l *lab) httpClient(ns string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.dial(ns, addr, 2*time.Second)
		},
	}}
}

// remove deletes every namespace; the veths and the bridge go with them.
func (l *lab) remove() {
	for ns, h := range l.ns {
		h.Close()
		if out, err := exec.Command("ip", "netns", "del", l.name(ns)).CombinedOutput(); err != nil {
			l.t.Logf("ip netns del %s: %v: %s", l.name(ns), err, out)
		}
	}
}
