package protocols

import "encoding/base64"

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
