package imap

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestProbeLogsOutPolitely is issue 10 point 14: the probe ends with
// H LOGOUT and reads the answer before it returns (and the health checker
// closes), so the logout is complete on the backend's side before the
// connection goes, instead of racing the close.
func TestProbeLogsOutPolitely(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		defer s.Close()
		s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(s, "* OK [CAPABILITY IMAP4rev1] ready\r\n"); err != nil {
			done <- err
			return
		}
		line, err := bufio.NewReader(s).ReadString('\n')
		if err != nil || line != "H LOGOUT\r\n" {
			done <- fmt.Errorf("got %q, %v; want %q", line, err, "H LOGOUT")
			return
		}
		// On a pipe this write returns only once the probe has read it.
		_, err = io.WriteString(s, "* BYE Logging out\r\nH OK Logout completed.\r\n")
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := (Handler{}).Probe(ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("the backend could not say goodbye: %v", err)
	}
}
