package proxy

import (
	"io"
	"mailproxy/internal/testkit"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRelayIdleHoldsNoPipe: small exchanges (commands, responses, a
// LOGOUT) go through a pooled buffer and never splice, so a relay that
// has only seen those holds no pipe at any time; and bytes flow both ways
// in turn.
func TestRelayIdleHoldsNoPipe(t *testing.T) {
	base := pipeFDs(t)
	f := startRelay(t, time.Minute, "", "")
	for _, tag := range []string{"a", "b", "c"} {
		io.WriteString(f.client, tag+" NOOP\r\n")
		if got := readN(t, f.backend, 8); got != tag+" NOOP\r\n" {
			t.Fatalf("backend got %q", got)
		}
		io.WriteString(f.backend, tag+" OK\r\n")
		if got := readN(t, f.client, 6); got != tag+" OK\r\n" {
			t.Fatalf("client got %q", got)
		}
		if n, p := splicing(), pipeFDs(t); n > 0 || p > base {
			t.Fatalf("after a small exchange: %d directions splicing, %d pipe descriptors (%d before)", n, p, base)
		}
	}
}

// TestRelayBulkClosesPipe: a bulk transfer is spliced through pipes the
// relay owns, and once the relay has been quiet for relayLinger (plus a
// margin) they are closed, not left for a garbage collection to find,
// which in an idle proxy runs every two minutes.
func TestRelayBulkClosesPipe(t *testing.T) {
	const size = 1 << 20
	base := pipeFDs(t)
	f := startRelay(t, time.Minute, "", "")
	exchangeBulk(t, f.client, f.backend, size)
	if splicing() == 0 && pipeFDs(t) <= base {
		t.Fatal("a 1 MiB transfer did not splice")
	}
	// No event to wait on: relayLinger is a deadline inside the relay.
	if !testkit.Eventually(relayLinger+500*time.Millisecond, 20*time.Millisecond, func() bool { return pipeFDs(t) <= base }) {
		t.Fatalf("%d pipe descriptors %v after a transfer, %d before it", pipeFDs(t), relayLinger+500*time.Millisecond, base)
	}
	if n := splicing(); n > 0 {
		t.Fatalf("%d directions still splicing after the pipes closed", n)
	}
	f.client.(*net.TCPConn).CloseWrite()
	f.backend.(*net.TCPConn).CloseWrite()
	if r := f.wait(t); r.err != nil || r.up != size || r.down != size {
		t.Fatalf("relay result %+v, want up and down %d, no error", r, size)
	}
}

// splicing counts the relay directions inside a bulk splice.
func splicing() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "proxy.(*direction).spliceBulk(")
}

// pipeFDs counts this process's descriptors that are pipes.
func pipeFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			n++
		}
	}
	return n
}
