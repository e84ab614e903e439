package smtp

import (
	"bufio"
	"context"
	"fmt"
	"net"

	"mailproxy/protocols"
)

// Probe implements protocols.Handler: the backend must greet with 220; the
// probe then sends QUIT and reads the 221 before the caller closes, so
// that the backend logs a polite goodbye. The caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	return protocols.Probe(conn, probeGreeting, "QUIT\r\n", probeFarewell)
}

func probeGreeting(r *bufio.Reader) error {
	rep, err := readReply(r)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if rep.code != 220 {
		return fmt.Errorf("%w: greeting %s", errBackend, rep)
	}
	return nil
}

func probeFarewell(r *bufio.Reader) { readReply(r) }
