package pop3

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"mailproxy/protocols"
)

// maxVerb is the longest command keyword accepted. RFC 1939 keywords are
// three or four characters; RFC 2449 allows extensions of more.
const maxVerb = 16

// command is one client line before login: the keyword in upper case and
// everything after the first space, unparsed (a password may hold spaces).
type command struct {
	verb string
	arg  string
}

// errSyntax is a line that is not a command; its text is for the client.
type errSyntax struct{ msg string }

func (e errSyntax) Error() string { return e.msg }

// parseCommand splits a line (without its CRLF) into keyword and argument.
// Control characters are refused anywhere in the line: nothing the client
// sends may end a line early when it is forwarded to a backend.
func parseCommand(line []byte) (command, error) {
	if len(line) == 0 {
		return command{}, errSyntax{"Empty command."}
	}
	for _, c := range line {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return command{}, errSyntax{"Invalid characters in command."}
		}
	}
	verb, arg, _ := strings.Cut(string(line), " ")
	if len(verb) == 0 || len(verb) > maxVerb {
		return command{}, errSyntax{"Unknown command."}
	}
	for _, c := range []byte(verb) {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
			return command{}, errSyntax{"Unknown command."}
		}
	}
	return command{verb: strings.ToUpper(verb), arg: arg}, nil
}

// safeArg reports whether s can go on a backend command line as it is.
func safeArg(s string) bool {
	return !strings.ContainsAny(s, "\x00\r\n")
}

// writeMulti writes a multi-line response (RFC 1939 §3): the status line,
// the lines dot-stuffed, and the terminating ".".
func writeMulti(w io.Writer, status string, lines []string) error {
	var b strings.Builder
	b.WriteString(status + "\r\n")
	for _, l := range lines {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l + "\r\n")
	}
	b.WriteString(".\r\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// readMulti reads the lines of a multi-line response after its status line,
// up to the terminating "." and without it, undoing the dot-stuffing. At
// most maxLines lines and maxMultiBytes in all are read; a longer response
// is an error.
func readMulti(r *bufio.Reader, maxLines int) ([]string, error) {
	var lines []string
	total := 0
	for {
		line, err := protocols.ReadLine(r, maxBackendLine)
		if err != nil {
			return nil, err
		}
		if total += len(line); total > maxMultiBytes {
			return nil, fmt.Errorf("%w: multi-line response over %d bytes", errBackend, maxMultiBytes)
		}
		s := string(line)
		if s == "." {
			return lines, nil
		}
		if len(lines) == maxLines {
			return nil, fmt.Errorf("%w: multi-line response over %d lines", errBackend, maxLines)
		}
		lines = append(lines, strings.TrimPrefix(s, "."))
	}
}

// status classifies a single-line response: true for +OK, false for -ERR,
// an error for anything else.
func status(line string) (bool, error) {
	switch {
	case line == "+OK" || strings.HasPrefix(line, "+OK "):
		return true, nil
	case line == "-ERR" || strings.HasPrefix(line, "-ERR "):
		return false, nil
	}
	return false, fmt.Errorf("%w: %q", errBackend, protocols.Truncate(line))
}
