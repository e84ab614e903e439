package imap

import (
	"testing"

	"mailproxy/internal/testkit"
)

// TestProbeLogsOutPolitely is issue 10 point 14: the probe ends with
// H LOGOUT and reads the answer before it returns (and the health checker
// closes).
func TestProbeLogsOutPolitely(t *testing.T) {
	testkit.ProbeLogsOut(t, Handler{}.Probe, "* OK [CAPABILITY IMAP4rev1] ready\r\n", "H LOGOUT\r\n", "* BYE Logging out\r\nH OK Logout completed.\r\n")
}
