package managesieve

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"strings"

	"mailproxy/protocols"
)

// token is one word of a command or response: an atom, or a string
// (quoted or literal, RFC 5804 §4), decoded.
type token struct {
	s   string
	str bool // a quoted string or literal, not an atom
}

// errSyntax is a client error answered with NO; the connection goes on.
type errSyntax struct{ msg string }

func (e errSyntax) Error() string { return e.msg }

// errFatal ends the connection with BYE: a literal too big to skip safely.
var errFatal = errors.New("unrecoverable client input")

// reader reads what a client sends before login: command lines with their
// literals, all bounded. ManageSieve clients send only non-synchronising
// literals ({n+}, RFC 5804 §4); a synchronising {n} is taken the same way,
// since the protocol has no continuation to answer it with.
type reader struct {
	r   *bufio.Reader
	max int // longest line or literal, and the budget of one command's literals
}

// readTokens reads one logical line (a line, and after each literal that
// ends it, the line that follows) and splits it into tokens. A syntax
// error comes back as errSyntax after the whole line has been read.
func (rd *reader) readTokens() ([]token, error) {
	budget := rd.max
	var toks []token
	for {
		line, err := protocols.ReadLine(rd.r, rd.max)
		if errors.Is(err, protocols.ErrLineTooLong) {
			return nil, errSyntax{"Line too long"}
		}
		if err != nil {
			return nil, err
		}
		more, lit, err := tokenize(string(line))
		toks = append(toks, more...)
		if err != nil {
			return toks, err
		}
		if lit < 0 {
			return toks, nil
		}
		if budget -= lit; budget < 0 {
			return toks, errFatal // the client is sending it already: no way to skip it safely
		}
		buf := make([]byte, lit)
		if _, err := io.ReadFull(rd.r, buf); err != nil {
			return nil, err
		}
		toks = append(toks, token{s: string(buf), str: true})
	}
}

// tokenize splits a line into tokens. When the line ends with a literal
// announcement, lit is its length (the caller reads the literal and the
// line after it), else -1. Parentheses (response codes) only separate.
func tokenize(s string) (toks []token, lit int, err error) {
	for s != "" {
		switch s[0] {
		case ' ', '(', ')':
			s = s[1:]
		case '"':
			v, n, err := protocols.ParseQuoted(s)
			if err != nil {
				return toks, -1, errSyntax{err.Error()}
			}
			toks = append(toks, token{s: v, str: true})
			s = s[n:]
		case '{':
			n, err := parseLiteral(s)
			return toks, n, err
		default:
			end := strings.IndexAny(s, " ()\"{")
			if end < 0 {
				end = len(s)
			}
			if strings.IndexFunc(s[:end], isCtl) >= 0 {
				return toks, -1, errSyntax{"Control character in atom"}
			}
			toks = append(toks, token{s: s[:end]})
			s = s[end:]
		}
	}
	return toks, -1, nil
}

func isCtl(r rune) bool { return r < ' ' || r == 0x7f }

// parseLiteral reads "{n+}" or "{n}", which must end the line.
func parseLiteral(s string) (int, error) {
	if !strings.HasSuffix(s, "}") {
		return -1, errSyntax{"Literal must end the line"}
	}
	body := strings.TrimSuffix(s[1:len(s)-1], "+")
	n, err := strconv.ParseUint(body, 10, 31)
	if err != nil || body == "" || body[0] == '+' {
		return -1, errSyntax{"Invalid literal size"}
	}
	return int(n), nil
}

// quote renders s as a ManageSieve string: quoted (with \" and \\
// escaped; UTF-8 is allowed there) unless it holds CR, LF or NUL, then a
// literal: {n} towards a client (literal-s2c), {n+} towards a server
// (literal-c2s).
func quote(s string, toServer bool) string {
	if strings.ContainsAny(s, "\r\n\x00") {
		plus := ""
		if toServer {
			plus = "+"
		}
		return "{" + strconv.Itoa(len(s)) + plus + "}\r\n" + s
	}
	return `"` + quoteEscaper.Replace(s) + `"`
}

var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)
