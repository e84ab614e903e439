package smtp

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// Limits on what the backend may send in the raw part of its dialogue.
const (
	maxReplyLine  = 4096 // RFC 5321 §4.5.3.1.5 says 512; be lenient with banners
	maxReplyLines = 100
)

// errBackend is a backend that does not speak SMTP as expected.
var errBackend = errors.New("unexpected backend response")

// reply is one SMTP reply (RFC 5321 §4.2): the code and the text of each
// line, without the code and its separator.
type reply struct {
	code  int
	lines []string
}

// readReply reads one reply, single- or multi-line ("250-..." lines, then
// "250 ..."). Every line must carry the same code.
func readReply(r *bufio.Reader) (reply, error) {
	var rep reply
	for {
		raw, err := protocols.ReadLine(r, maxReplyLine)
		if err != nil {
			return rep, err
		}
		line := string(raw)
		code, ok := replyCode(line)
		switch {
		case !ok:
			return rep, fmt.Errorf("%w: %q", errBackend, protocols.Truncate(line))
		case rep.lines != nil && code != rep.code:
			return rep, fmt.Errorf("%w: code changes within a reply: %q", errBackend, protocols.Truncate(line))
		case len(line) > 3 && line[3] != ' ' && line[3] != '-':
			return rep, fmt.Errorf("%w: %q", errBackend, protocols.Truncate(line))
		}
		rep.code = code
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		rep.lines = append(rep.lines, text)
		if len(line) == 3 || line[3] == ' ' {
			return rep, nil
		}
		if len(rep.lines) >= maxReplyLines {
			return rep, fmt.Errorf("%w: reply of more than %d lines", errBackend, maxReplyLines)
		}
	}
}

// replyCode parses the three digits that start a reply line; the first
// is 2 to 5 (RFC 5321 §4.2.1).
func replyCode(line string) (int, bool) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9' {
		return 0, false
	}
	return int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'), true
}

// wire renders the reply as the backend sent it (modulo a bare code
// getting its space), for replaying to go-smtp's client.
func (r reply) wire() string {
	var b strings.Builder
	for i, l := range r.lines {
		sep := "-"
		if i == len(r.lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%03d%s%s\r\n", r.code, sep, l)
	}
	return b.String()
}

// String is the reply on one line, for logs and errors.
func (r reply) String() string {
	return protocols.Truncate(fmt.Sprintf("%03d %s", r.code, strings.Join(r.lines, " / ")))
}

// err is the reply as go-smtp's error type, which go-smtp's server relays
// verbatim: code, enhanced code (RFC 2034, on every line) and text.
func (r reply) err() *gosmtp.SMTPError {
	code, msg := SplitEnhanced(strings.Join(r.lines, "\n"))
	return &gosmtp.SMTPError{Code: r.code, EnhancedCode: code, Message: msg}
}

// extensions parses an EHLO reply: the first line greets, every further
// line is a keyword (upper-cased) and its parameters (RFC 5321 §4.1.1.1).
func (r reply) extensions() map[string]string {
	ext := make(map[string]string)
	if len(r.lines) < 2 {
		return ext
	}
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k != "" {
			ext[strings.ToUpper(k)] = strings.TrimSpace(v)
		}
	}
	return ext
}
