package protocols

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The OAuth 2.0 SASL mechanisms mailproxy passes through: the client's
// message goes to the backend unchanged, which checks the token; mailproxy
// reads only the user name, which routes. OAUTHBEARER is RFC 7628,
// XOAUTH2 Google's older form of the same idea.
const (
	MechOAuthBearer = "OAUTHBEARER"
	MechXOAuth2     = "XOAUTH2"
)

// PassthroughMechs are the mechanisms a protocol relays to the backend
// instead of decoding, in the order they are announced; read-only.
var PassthroughMechs = []string{MechOAuthBearer, MechXOAuth2}

// IsPassthrough reports whether mech (any case) is one of PassthroughMechs.
func IsPassthrough(mech string) bool {
	return slices.Contains(PassthroughMechs, strings.ToUpper(mech))
}

// ErrOAuthSyntax is a malformed OAUTHBEARER or XOAUTH2 message; protocols
// answer it with their syntax error (BAD, -ERR, 501).
var ErrOAuthSyntax = errors.New("malformed OAuth SASL message")

// ErrOAuthNoUser is a well-formed OAUTHBEARER message without "a=": the
// user is then known only to the token's issuer, and mailproxy, which must
// route before the backend sees the token, refuses it.
var ErrOAuthNoUser = errors.New("OAUTHBEARER message names no user (a=)")

// ParseOAuth reads the client's first message of mech (OAUTHBEARER or
// XOAUTH2) and returns the user it names: the gs2 authzid "a=" of RFC 7628
// §3.1, or XOAUTH2's "user=". It checks the framing only (the key=value
// pairs, an auth=Bearer token, the terminators); the token is the
// backend's to judge. Errors are ErrOAuthSyntax or ErrOAuthNoUser, wrapped.
func ParseOAuth(mech string, msg []byte) (string, error) {
	switch strings.ToUpper(mech) {
	case MechOAuthBearer:
		return parseOAuthBearer(msg)
	case MechXOAuth2:
		return parseXOAuth2(msg)
	}
	return "", ErrUnknownMechanism
}

// parseOAuthBearer: gs2-header kvsep *kvpair kvsep, where gs2-header is
// gs2-cb-flag "," [ "a=" saslname ] "," and kvsep is %x01.
func parseOAuthBearer(msg []byte) (string, error) {
	flag, rest, ok := bytes.Cut(msg, []byte{','})
	if !ok || (string(flag) != "n" && string(flag) != "y") {
		return "", oauthErr("gs2 header must start with n, or y,")
	}
	authzid, rest, ok := bytes.Cut(rest, []byte{','})
	if !ok {
		return "", oauthErr("gs2 header not terminated")
	}
	user := ""
	if len(authzid) > 0 {
		name, ok := bytes.CutPrefix(authzid, []byte("a="))
		if !ok {
			return "", oauthErr("gs2 authzid must be a=")
		}
		var err error
		if user, err = unescapeSASLName(name); err != nil {
			return "", err
		}
	}
	pairs, ok := bytes.CutPrefix(rest, []byte{1})
	if !ok {
		return "", oauthErr("no separator after the gs2 header")
	}
	if err := checkPairs(pairs, "auth"); err != nil {
		return "", err
	}
	if user == "" {
		return "", ErrOAuthNoUser
	}
	return user, nil
}

// parseXOAuth2: "user=" name %x01 "auth=Bearer " token %x01 %x01.
func parseXOAuth2(msg []byte) (string, error) {
	first, rest, ok := bytes.Cut(msg, []byte{1})
	if !ok {
		return "", oauthErr("no separator after user=")
	}
	name, ok := bytes.CutPrefix(first, []byte("user="))
	if !ok || len(name) == 0 {
		return "", oauthErr("must start with user=")
	}
	if err := checkPairs(rest, "auth"); err != nil {
		return "", err
	}
	user := string(name)
	if !validUser(user) {
		return "", oauthErr("invalid user name")
	}
	return user, nil
}

// checkPairs checks *(key "=" value %x01) %x01 (RFC 7628 §3.1: key is
// 1*ALPHA, value *(VCHAR / SP / HTAB / CR / LF)) and that it holds the
// key must, with a "Bearer " value (case-insensitive) and a token.
func checkPairs(b []byte, must string) error {
	body, ok := bytes.CutSuffix(b, []byte{1})
	if !ok {
		return oauthErr("not terminated by ^A^A")
	}
	found := false
	for len(body) > 0 {
		pair, rest, ok := bytes.Cut(body, []byte{1})
		if !ok {
			return oauthErr("key=value not terminated")
		}
		body = rest
		key, value, ok := bytes.Cut(pair, []byte{'='})
		if !ok || !alpha(key) || !vchars(value) {
			return oauthErr("malformed key=value")
		}
		if string(key) == must {
			tok, ok := cutPrefixFold(value, "bearer ")
			if !ok || len(bytes.TrimSpace(tok)) == 0 {
				return oauthErr("auth is not a Bearer token")
			}
			found = true
		}
	}
	if !found {
		return oauthErr("no auth=Bearer token")
	}
	return nil
}

// unescapeSASLName undoes RFC 5801's "=2C" (",") and "=3D" ("=").
func unescapeSASLName(b []byte) (string, error) {
	var sb strings.Builder
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '=' && i+2 < len(b) && string(b[i+1:i+3]) == "2C":
			sb.WriteByte(',')
			i += 2
		case c == '=' && i+2 < len(b) && string(b[i+1:i+3]) == "3D":
			sb.WriteByte('=')
			i += 2
		case c == '=' || c == ',':
			return "", oauthErr("bad escape in a=")
		default:
			sb.WriteByte(c)
		}
	}
	if !validUser(sb.String()) {
		return "", oauthErr("invalid user name in a=")
	}
	return sb.String(), nil
}

// validUser: a user name that can route and go on a protocol line: no
// control characters, no spaces, at most 255 bytes.
func validUser(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

func alpha(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

func vchars(b []byte) bool {
	for _, c := range b {
		if (c < 0x21 || c > 0x7e) && c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

func cutPrefixFold(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || !strings.EqualFold(string(b[:len(prefix)]), prefix) {
		return b, false
	}
	return b[len(prefix):], true
}

func oauthErr(why string) error { return fmt.Errorf("%w: %s", ErrOAuthSyntax, why) }
