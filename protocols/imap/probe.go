package imap

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"

	"mailproxy/protocols"
)

// Probe implements protocols.Handler: the backend must greet with "* OK";
// the probe then logs out politely. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	return protocols.Probe(conn, probeGreeting, "H LOGOUT\r\n")
}

func probeGreeting(r *bufio.Reader) error {
	line, err := protocols.ReadLine(r, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(string(line), "* OK") {
		return fmt.Errorf("%w: greeting %q", errBackend, protocols.Truncate(string(line)))
	}
	return nil
}
