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
	return protocols.Probe(conn, probeGreeting, "QUIT\r\n", probeFarewell)
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

var _ protocols.MechProber = Handler{}

// ProbeMechs implements protocols.MechProber: the mechanisms of
// PassthroughMechs in the backend's CAPA "SASL" line, after STLS when its
// tls says so.
func (Handler) ProbeMechs(ctx context.Context, b *protocols.Backend) ([]string, error) {
	if err := greet(ctx, b); err != nil {
		return nil, err
	}
	defer io.WriteString(b.Conn, "QUIT\r\n")
	line, err := backendCommand(b, "CAPA")
	if ok, serr := status(line); err != nil || serr != nil || !ok {
		return nil, nil
	}
	caps, err := readMulti(b.Reader, maxCapaLines)
	if err != nil {
		return nil, nil
	}
	var mechs []string
	for _, m := range protocols.PassthroughMechs {
		if hasCap(caps, "SASL", m) {
			mechs = append(mechs, m)
		}
	}
	return mechs, nil
}

func probeFarewell(r *bufio.Reader) { protocols.ReadLine(r, maxBackendLine) }
