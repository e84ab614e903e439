package imap

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"mailproxy/protocols"
)

// maxChallenges bounds the backend's challenges in a passthrough exchange:
// OAUTHBEARER and XOAUTH2 have one (the error report) at most.
const maxChallenges = 2

// passMechs are the passthrough mechanisms the pool's backends offer.
func (f *front) passMechs() []string {
	if f.s.PassMechs == nil {
		return nil
	}
	return f.s.PassMechs()
}

func (f *front) offers(mech string) bool {
	return slices.Contains(f.passMechs(), strings.ToUpper(mech))
}

// authPassthrough is AUTHENTICATE OAUTHBEARER or XOAUTH2: mailproxy reads
// the user from the client's message, picks that user's backend and hands
// it the message unchanged; the backend's answer, an error challenge
// included, is the client's (login, backendLogin).
func (f *front) authPassthrough(ctx context.Context, cmd *command) (*protocols.Relay, bool, error) {
	mech := strings.ToUpper(cmd.args[0])
	var msg []byte
	var err error
	if len(cmd.args) == 2 {
		if msg, err = protocols.DecodeSASL(cmd.args[1]); err != nil {
			return nil, false, bad("Invalid base64 initial response")
		}
	} else {
		line, err := f.relayChallenge("+ ")
		if err != nil {
			return nil, false, err
		}
		if line == "*" {
			return nil, false, bad("Authentication cancelled.")
		}
		if msg, err = base64.StdEncoding.DecodeString(line); err != nil {
			return nil, false, bad("Invalid base64 response")
		}
	}
	user, err := protocols.ParseOAuth(mech, msg)
	switch {
	case errors.Is(err, protocols.ErrOAuthNoUser):
		f.s.Log.Info("login failed: no user in the SASL message", "mechanism", mech)
		return nil, false, no("[CANNOT] " + mech + " without a user name (a=) is not supported.")
	case err != nil:
		f.s.Log.Info("login failed: malformed SASL message", "mechanism", mech, "err", err)
		return nil, false, bad("Malformed " + mech + " message")
	}
	creds := protocols.Credentials{Username: user, Mech: mech, Message: protocols.Password(msg)}
	return f.login(ctx, cmd.tag, creds)
}

// relayChallenge sends the client a continuation line as the backend
// worded it and returns the client's answer line. A line too long or not
// base64 (nor "*") comes back as "*", which cancels the exchange on the
// backend, whose answer the client then gets.
func (f *front) relayChallenge(cont string) (string, error) {
	if err := f.reply("%s", cont); err != nil {
		return "", err
	}
	line, err := protocols.ReadLine(f.rd.r, f.s.MaxLine)
	if errors.Is(err, protocols.ErrLineTooLong) {
		return "*", nil
	}
	if err != nil {
		return "", err
	}
	if _, err := base64.StdEncoding.DecodeString(string(line)); err != nil && string(line) != "*" {
		return "*", nil
	}
	return string(line), nil
}

// authPassthrough sends AUTHENTICATE with the client's message (as an
// initial response when the backend has SASL-IR), after idLine in the same
// write when there is one, and relays each challenge of the backend to the
// client through step and the client's answer back.
func authPassthrough(b *protocols.Backend, creds protocols.Credentials, idLine string, s *protocols.Session, step func(string) (string, error)) (string, []string, error) {
	if !hasCap(b.Caps, "AUTH="+creds.Mech) {
		return "", nil, fmt.Errorf("%w: backend does not offer AUTH=%s", errBackend, creds.Mech)
	}
	ir := base64.StdEncoding.EncodeToString([]byte(creds.Message))
	if ir == "" {
		ir = "="
	}
	line := "P3 AUTHENTICATE " + creds.Mech
	sentIR := hasCap(b.Caps, "SASL-IR")
	if sentIR {
		line += " " + ir
	}
	if idLine != "" {
		line = idLine + "\r\n" + line
	}
	if _, err := io.WriteString(b.Conn, line+"\r\n"); err != nil {
		return "", nil, err
	}
	if idLine != "" {
		if err := readID(b, s); err != nil {
			return "", nil, err
		}
	}
	resp, untagged, err := readTagged(b, "P3")
	if err == nil && !sentIR && strings.HasPrefix(resp, "+") {
		if _, err := io.WriteString(b.Conn, ir+"\r\n"); err != nil {
			return "", nil, err
		}
		resp, untagged, err = readTagged(b, "P3")
	}
	for n := 0; err == nil && strings.HasPrefix(resp, "+"); n++ {
		if n == maxChallenges {
			io.WriteString(b.Conn, "*\r\n")
			return "", nil, fmt.Errorf("%w: more than %d SASL challenges", errBackend, maxChallenges)
		}
		answer, err := step(resp)
		if err != nil {
			return "", nil, err
		}
		if _, err := io.WriteString(b.Conn, answer+"\r\n"); err != nil {
			return "", nil, err
		}
		resp, untagged, err = readTagged(b, "P3")
	}
	return resp, untagged, err
}
