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
// the probe then logs out politely and reads the answer before the caller
// closes, so that the backend logs a logout, not a lost client. The
// caller sets the deadline.
func (Handler) Probe(ctx context.Context, conn net.Conn) error {
	return protocols.Probe(conn, probeGreeting, "H LOGOUT\r\n", probeFarewell)
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

var _ protocols.MechProber = Handler{}

// ProbeMechs implements protocols.MechProber: the AUTH= capabilities of
// PassthroughMechs the backend announces, after STARTTLS when its tls says
// so (Dovecot hides mechanisms before TLS).
func (Handler) ProbeMechs(ctx context.Context, b *protocols.Backend) ([]string, error) {
	if err := greet(ctx, b); err != nil {
		return nil, err
	}
	defer io.WriteString(b.Conn, "H LOGOUT\r\n")
	if b.Caps == nil {
		_, untagged, err := backendCommand(b, "P1", "CAPABILITY")
		if err != nil {
			return nil, nil
		}
		b.Caps = untaggedCapability(untagged)
	}
	var mechs []string
	for _, m := range protocols.PassthroughMechs {
		if hasCap(b.Caps, "AUTH="+m) {
			mechs = append(mechs, m)
		}
	}
	return mechs, nil
}

// probeFarewell reads "* BYE", then the tagged OK.
func probeFarewell(r *bufio.Reader) {
	for range 8 {
		line, err := protocols.ReadLine(r, maxBackendLine)
		if err != nil || strings.HasPrefix(string(line), "H ") {
			return
		}
	}
}
