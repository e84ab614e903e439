package pop3

import (
	"bufio"
	"errors"
	"strings"
	"testing"
)

// TestReadMultiBounded is issue 10 point 6 for POP3: a multi-line answer
// read before login (CAPA) is bounded in bytes as well as lines, so a
// misbehaving backend cannot make a session hold megabytes.
func TestReadMultiBounded(t *testing.T) {
	long := strings.Repeat("X"+strings.Repeat("y", 60<<10)+"\r\n", 200) + ".\r\n" // 12 MB in 200 lines
	if _, err := readMulti(bufio.NewReader(strings.NewReader(long)), maxCapaLines); !errors.Is(err, errBackend) {
		t.Errorf("12 MB CAPA: err %v, want errBackend", err)
	}
	ok := "TOP\r\nUSER\r\nSASL PLAIN LOGIN\r\n..dotted\r\n.\r\n"
	lines, err := readMulti(bufio.NewReader(strings.NewReader(ok)), maxCapaLines)
	if err != nil || strings.Join(lines, "|") != "TOP|USER|SASL PLAIN LOGIN|.dotted" {
		t.Errorf("got %q, %v", lines, err)
	}
}
