package pop3

import (
	"testing"

	"mailproxy/internal/testkit"
)

// TestProbeLogsOutPolitely is issue 10 point 14: the probe ends with
// QUIT and reads the answer before it returns (and the health checker
// closes).
func TestProbeLogsOutPolitely(t *testing.T) {
	testkit.ProbeLogsOut(t, Handler{}.Probe, "+OK ready\r\n", "QUIT\r\n", "+OK Logging out.\r\n")
}
