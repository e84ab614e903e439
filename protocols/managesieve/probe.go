package managesieve

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
)

// Probe implements protocols.Handler: the backend must greet with its
// capabilities and OK; the probe then logs out politely. The capabilities
// are kept for the greetings of clients. The caller sets the deadline.
func (h *Handler) Probe(ctx context.Context, conn net.Conn) error {
	caps, err := readCapabilities(bufio.NewReaderSize(conn, 1024))
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	h.learn(caps)
	io.WriteString(conn, "LOGOUT\r\n")
	return nil
}
