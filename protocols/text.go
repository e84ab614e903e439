package protocols

import (
	"encoding/base64"
	"errors"
	"strings"
)

// Truncate shortens a line read from a backend or client to 120 bytes
// for an error message or a log line.
func Truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// DecodeSASL decodes a base64 SASL response (RFC 4422 §3.5 as IMAP, POP3
// and SMTP carry it); "=" is the empty initial response.
func DecodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// ParseQuoted decodes the quoted string at the start of s (IMAP's and
// ManageSieve's "quoted": escapes \" and \\ only, no CR, LF or NUL) and
// returns it and how many bytes it took. The error's text is fit for a
// client.
func ParseQuoted(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			i++
			if i == len(s) || (s[i] != '"' && s[i] != '\\') {
				return "", 0, errors.New("Invalid escape in quoted string")
			}
			b.WriteByte(s[i])
		case 0, '\r', '\n':
			return "", 0, errors.New("CR, LF or NUL in quoted string")
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("Unterminated quoted string")
}
