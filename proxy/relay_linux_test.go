package proxy

import (
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRelayIdleHoldsNoPipe: once a relay has been quiet for relayLinger,
// neither direction sits in a splice (which holds a pipe: two descriptors
// and kernel memory per direction of every idle session), and bytes still
// flow both ways after that.
func TestRelayIdleHoldsNoPipe(t *testing.T) {
	f := startRelay(t, time.Minute, "", "")
	for _, tag := range []string{"a", "b"} {
		io.WriteString(f.client, tag+" NOOP\r\n")
		if got := readN(t, f.backend, 8); got != tag+" NOOP\r\n" {
			t.Fatalf("backend got %q", got)
		}
		io.WriteString(f.backend, tag+" OK\r\n")
		if got := readN(t, f.client, 6); got != tag+" OK\r\n" {
			t.Fatalf("client got %q", got)
		}
		deadline := time.Now().Add(relayLinger + 5*time.Second)
		for n := splicing(); n > 0; n = splicing() {
			if time.Now().After(deadline) {
				t.Fatalf("%d relay directions still splicing %v after the last byte", n, relayLinger+5*time.Second)
			}
			time.Sleep(20 * time.Millisecond) // no event: the linger is a deadline inside the relay
		}
	}
}

// splicing counts the goroutines inside a splice.
func splicing() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "internal/poll.Splice(")
}
