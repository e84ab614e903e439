package lmtp

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
	if _, err := readReply(bufio.NewReaderSize(conn, 1024), 220); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	io.WriteString(conn, "QUIT\r\n")
	return nil
}
