package pop3

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"

	"mailproxy/protocols"
)

// Probe implements protocols.Handler: the backend must greet with "+OK";
// the probe then quits politely and reads the answer before the caller
// closes, so that the backend logs a logout, not a lost client. The
// caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	r := bufio.NewReaderSize(conn, 1024)
	line, err := protocols.ReadLine(r, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if ok, err := status(string(line)); !ok || err != nil {
		return fmt.Errorf("%w: greeting %q", errBackend, truncate(string(line)))
	}
	if _, err := io.WriteString(conn, "QUIT\r\n"); err == nil {
		protocols.ReadLine(r, maxBackendLine) // whatever it says: it greeted
	}
	return nil
}
