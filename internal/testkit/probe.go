package testkit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// ProbeLogsOut checks that a protocol's health probe ends with the
// goodbye command bye (e.g. "QUIT\r\n") and reads the backend's answer
// before it returns, so the logout is complete on the backend's side
// before the connection goes, instead of racing the close. The fake
// backend sends greeting, expects bye, and answers with answer.
func ProbeLogsOut(t *testing.T, probe func(context.Context, net.Conn) error, greeting, bye, answer string) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		defer s.Close()
		s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(s, greeting); err != nil {
			done <- err
			return
		}
		line, err := bufio.NewReader(s).ReadString('\n')
		if err != nil || line != bye {
			done <- fmt.Errorf("got %q, %v; want %q", line, err, bye)
			return
		}
		// On a pipe this write returns only once the probe has read it.
		_, err = io.WriteString(s, answer)
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := probe(ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("the backend could not say goodbye: %v", err)
	}
}
