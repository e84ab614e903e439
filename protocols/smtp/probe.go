package smtp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
)

// Probe implements protocols.Handler: the backend must greet with 220; the
// probe then sends QUIT and reads the 221 before the caller closes, so
// that the backend logs a polite goodbye. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	r := bufio.NewReaderSize(conn, 1024)
	rep, err := readReply(r)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if rep.code != 220 {
		return fmt.Errorf("%w: greeting %s", errBackend, rep)
	}
	if _, err := io.WriteString(conn, "QUIT\r\n"); err == nil {
		readReply(r) // whatever it says: it greeted
	}
	return nil
}
