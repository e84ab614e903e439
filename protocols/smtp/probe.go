package smtp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
)

// Probe implements protocols.Handler: the backend must greet with 220; the
// probe then sends QUIT. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	rep, err := readReply(bufio.NewReaderSize(conn, 1024))
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if rep.code != 220 {
		return fmt.Errorf("%w: greeting %s", errBackend, rep)
	}
	io.WriteString(conn, "QUIT\r\n")
	return nil
}
