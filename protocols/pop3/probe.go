package pop3

import (
	"bufio"
	"context"
	"fmt"
	"net"

	"mailproxy/protocols"
)

// Probe implements protocols.Handler: the backend must greet with "+OK";
// the probe then quits politely. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	return protocols.Probe(conn, probeGreeting, "QUIT\r\n")
}

func probeGreeting(r *bufio.Reader) error {
	line, err := protocols.ReadLine(r, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if ok, err := status(string(line)); !ok || err != nil {
		return fmt.Errorf("%w: greeting %q", errBackend, protocols.Truncate(string(line)))
	}
	return nil
}
