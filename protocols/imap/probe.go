package imap

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"

	"mailproxy/protocols"
)

// Probe implements protocols.Handler: the backend must greet with "* OK";
// the probe then logs out politely. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	r := bufio.NewReaderSize(conn, 1024)
	line, err := protocols.ReadLine(r, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(string(line), "* OK") {
		return fmt.Errorf("%w: greeting %q", errBackend, protocols.Truncate(string(line)))
	}
	io.WriteString(conn, "H LOGOUT\r\n")
	return nil
}
