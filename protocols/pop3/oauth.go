package pop3

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"mailproxy/protocols"
)

// maxChallenges bounds the backend's challenges in a passthrough exchange:
// OAUTHBEARER and XOAUTH2 have one (the error report) at most.
const maxChallenges = 2

// mechs are the SASL mechanisms offered now: PLAIN and LOGIN, and the
// passthrough ones the pool's backends offer.
func (f *front) mechs() []string {
	m := []string{protocols.MechPlain, protocols.MechLogin}
	if f.s.PassMechs != nil {
		m = append(m, f.s.PassMechs()...)
	}
	return m
}

func (f *front) offers(mech string) bool {
	return slices.Contains(f.mechs(), strings.ToUpper(mech))
}

// authPassthrough is AUTH OAUTHBEARER or XOAUTH2: mailproxy reads the user
// from the client's message, picks that user's backend and hands it the
// message unchanged; the backend's answer, an error challenge included, is
// the client's (login, backendLogin).
func (f *front) authPassthrough(ctx context.Context, mech, ir string, hasIR bool) (*protocols.Relay, bool, error) {
	mech = strings.ToUpper(mech)
	var msg []byte
	var err error
	if hasIR {
		if msg, err = protocols.DecodeSASL(ir); err != nil {
			return nil, false, bad("Invalid base64 initial response.")
		}
	} else if msg, err = f.challenge(nil); err != nil {
		return nil, false, saslReply(err)
	}
	user, err := protocols.ParseOAuth(mech, msg)
	switch {
	case errors.Is(err, protocols.ErrOAuthNoUser):
		f.s.Log.Info("login failed: no user in the SASL message", "mechanism", mech)
		return nil, false, bad(mech + " without a user name (a=) is not supported.")
	case err != nil:
		f.s.Log.Info("login failed: malformed SASL message", "mechanism", mech, "err", err)
		return nil, false, bad("Malformed " + mech + " message.")
	}
	return f.login(ctx, protocols.Credentials{Username: user, Mech: mech, Message: protocols.Password(msg)})
}

// relayChallenge sends the client a backend's "+ ..." line as the backend
// worded it and returns the client's answer. An answer too long or not
// base64 (nor "*") comes back as "*", which cancels the exchange on the
// backend, whose answer the client then gets.
func (f *front) relayChallenge(cont string) (string, error) {
	if err := f.reply("%s", cont); err != nil {
		return "", err
	}
	line, err := protocols.ReadLine(f.r, f.maxLine())
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

// errClientGone is a client lost in the middle of a passthrough exchange;
// errNoMech a backend that no longer offers the mechanism. Neither says
// anything about the backend's health.
var (
	errClientGone = errors.New("client lost during SASL exchange")
	errNoMech     = errors.New("backend does not offer the mechanism")
)

// authPassthrough is AUTH with the client's message as the initial
// response (RFC 5034 §4), each challenge relayed through step.
func authPassthrough(b *protocols.Backend, creds protocols.Credentials, step func(string) (string, error)) (bool, string, error) {
	if !hasCap(b.Caps, "SASL", creds.Mech) {
		return false, "", fmt.Errorf("%w: SASL %s", errNoMech, creds.Mech)
	}
	ir := base64.StdEncoding.EncodeToString([]byte(creds.Message))
	if ir == "" {
		ir = "="
	}
	line, err := backendCommand(b, "AUTH "+creds.Mech+" "+ir)
	for n := 0; err == nil && (line == "+" || strings.HasPrefix(line, "+ ")); n++ {
		if n == maxChallenges {
			backendCommand(b, "*")
			return false, "", fmt.Errorf("%w: more than %d SASL challenges", errBackend, maxChallenges)
		}
		var answer string
		if answer, err = step(line); err != nil {
			return false, "", fmt.Errorf("%w: %w", errClientGone, err)
		}
		line, err = backendCommand(b, answer)
	}
	if err != nil {
		return false, "", fmt.Errorf("auth %s: %w", strings.ToLower(creds.Mech), err)
	}
	ok, err := status(line)
	return ok, line, err
}
