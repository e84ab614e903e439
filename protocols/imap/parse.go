package imap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"mailproxy/protocols"
)

// command is one client command before login.
type command struct {
	tag  string
	name string   // upper case
	args []string // atoms, quoted strings and literals, decoded; parentheses dropped
}

// errSyntax is a client error answered with BAD; the connection goes on.
type errSyntax struct{ msg string }

func (e errSyntax) Error() string { return e.msg }

// errFatal is a command whose rest cannot be told from the next command: a
// line over the limit, or a non-synchronising literal too big or with a
// size that does not parse, whose bytes the client is already sending.
// It is answered BAD with the command's tag (when one could be read), then
// BYE, and the connection ends, as Dovecot and nginx do.
type errFatal struct{ msg string }

func (e errFatal) Error() string { return e.msg }

// reader reads commands before login: lines and literals, both bounded.
type reader struct {
	r   *bufio.Reader
	w   io.Writer // for the "+" continuation of synchronising literals
	max int
}

// readCommand reads one whole command, fetching literals as the line
// announces them. A syntax error comes back as errSyntax with as much of
// the command (the tag) as could be read.
func (rd *reader) readCommand() (*command, error) {
	line, err := protocols.ReadLine(rd.r, rd.max)
	if errors.Is(err, protocols.ErrLineTooLong) {
		cmd := &command{}
		if tag, _ := cutWord(string(line)); validTag(tag) {
			cmd.tag = tag
		}
		return cmd, errFatal{"Line too long"}
	}
	if err != nil {
		return nil, err
	}
	cmd := &command{}
	rest := string(line)
	cmd.tag, rest = cutWord(rest)
	if !validTag(cmd.tag) {
		cmd.tag = ""
		return cmd, errSyntax{"Invalid tag"}
	}
	cmd.name, rest = cutWord(rest)
	if cmd.name == "" {
		return cmd, errSyntax{"Missing command"}
	}
	cmd.name = strings.ToUpper(cmd.name)
	budget := rd.max
	for {
		args, lit, err := parseArgs(rest)
		cmd.args = append(cmd.args, args...)
		if err != nil {
			return cmd, err
		}
		if lit == nil {
			return cmd, nil
		}
		if budget -= lit.n; lit.n > rd.max || budget < 0 {
			if lit.plus {
				return cmd, errFatal{"[TOOBIG] Literal too big"} // the client is already sending it
			}
			return cmd, errSyntax{"[TOOBIG] Literal too big"}
		}
		if !lit.plus {
			if _, err := io.WriteString(rd.w, "+ Ready for literal data\r\n"); err != nil {
				return nil, err
			}
		}
		buf := make([]byte, lit.n)
		if _, err := io.ReadFull(rd.r, buf); err != nil {
			return nil, err
		}
		cmd.args = append(cmd.args, string(buf))
		line, err = protocols.ReadLine(rd.r, rd.max)
		if errors.Is(err, protocols.ErrLineTooLong) {
			return cmd, errFatal{"Line too long"}
		}
		if err != nil {
			return nil, err
		}
		rest = string(line)
	}
}

// literal is a {n} or {n+} announcement at the end of a line.
type literal struct {
	n    int
	plus bool
}

// parseArgs splits the rest of a line into arguments. It returns a literal
// when the line ends with one; the caller reads it and parses the line that
// follows it.
func parseArgs(s string) (args []string, lit *literal, err error) {
	for s != "" {
		switch s[0] {
		case ' ', '(', ')':
			s = s[1:]
		case '"':
			v, n, err := protocols.ParseQuoted(s)
			if err != nil {
				return args, nil, errSyntax{err.Error()}
			}
			args = append(args, v)
			s = s[n:]
		case '{':
			l, err := parseLiteral(s)
			return args, l, err
		default:
			end := strings.IndexAny(s, " ()")
			if end < 0 {
				end = len(s)
			}
			args = append(args, s[:end])
			s = s[end:]
		}
	}
	return args, nil, nil
}

// parseLiteral reads "{n}" or "{n+}", which must end the line. A "{...+}"
// whose size does not parse is fatal: the client is sending its bytes.
func parseLiteral(s string) (*literal, error) {
	if !strings.HasSuffix(s, "}") {
		return nil, errSyntax{"Literal must end the line"}
	}
	body := s[1 : len(s)-1]
	l := &literal{}
	if strings.HasSuffix(body, "+") {
		l.plus, body = true, body[:len(body)-1]
	}
	n, err := strconv.ParseUint(body, 10, 31)
	if err != nil || body == "" || body[0] == '+' {
		if l.plus {
			return nil, errFatal{"Invalid literal size"}
		}
		return nil, errSyntax{"Invalid literal size"}
	}
	l.n = int(n)
	return l, nil
}

func cutWord(s string) (word, rest string) {
	word, rest, _ = strings.Cut(s, " ")
	return word, rest
}

// validTag: any ASTRING-CHAR but "+" (RFC 9051 tag), at most 64 bytes.
func validTag(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%*"\+`, c) >= 0 {
			return false
		}
	}
	return true
}

// quote renders s as an IMAP string for the backend: quoted when it can be,
// otherwise a non-synchronising literal (the caller checks LITERAL+) or a
// synchronising one, marked by the returned bool.
func quote(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\r' || c == '\n' || c == 0 || c >= 0x80 {
			return fmt.Sprintf("{%d}\r\n%s", len(s), s), true
		}
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`, false
}
