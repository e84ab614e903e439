package smtp

import (
	"testing"

	"mailproxy/internal/testkit"
)

// TestProbeLogsOutPolitely is issue 10 point 14: the probe ends with
// QUIT and reads the answer before it returns (and the health checker
// closes).
func TestProbeLogsOutPolitely(t *testing.T) {
	testkit.ProbeLogsOut(t, Handler{}.Probe, "220 mx ESMTP\r\n", "QUIT\r\n", "221 2.0.0 Bye\r\n")
}
