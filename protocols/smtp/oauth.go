package smtp

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// maxChallenges bounds the backend's challenges in a passthrough exchange:
// OAUTHBEARER and XOAUTH2 have one (the error report) at most.
const maxChallenges = 2

var (
	errMalformedSASL = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Malformed SASL message"}
	errNoSASLUser    = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "A SASL message without a user name (a=) is not supported"}
	errAuthRefused   = &gosmtp.SMTPError{Code: 454, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Too many failed logins, try again later"}
)

// passMechs are the passthrough mechanisms the session's backend announced
// in its EHLO reply, in passthrough mode only (mailproxy cannot check a
// token itself). During a BDAT transfer the backend is busy: none.
func (f *front) passMechs() []string {
	if f.s.Authenticate != nil || !f.mu.TryLock() {
		return nil
	}
	defer f.mu.Unlock()
	var m []string
	for _, mech := range protocols.PassthroughMechs {
		if f.back != nil && f.back.c.SupportsAuth(mech) {
			m = append(m, mech)
		}
	}
	return m
}

// passServer relays an OAUTHBEARER or XOAUTH2 exchange between the client
// (go-smtp drives it) and the session's backend, which checks the token.
type passServer struct {
	f     *front
	mech  string
	creds protocols.Credentials
	steps int // challenges relayed so far; 0 before the client's message
}

var _ sasl.Server = (*passServer)(nil)

func (p *passServer) Next(resp []byte) ([]byte, bool, error) {
	f := p.f
	if p.creds.Mech == "" {
		if resp == nil {
			return []byte{}, false, nil // no initial response: ask for it
		}
		user, err := protocols.ParseOAuth(p.mech, resp)
		switch {
		case errors.Is(err, protocols.ErrOAuthNoUser):
			f.s.Log.Info("login failed: no user in the SASL message", "mechanism", p.mech)
			return nil, true, errNoSASLUser
		case err != nil:
			f.s.Log.Info("login failed: malformed SASL message", "mechanism", p.mech, "err", err)
			return nil, true, errMalformedSASL
		}
		p.creds = protocols.Credentials{Username: user, Mech: p.mech, Message: protocols.Password(resp)}
		f.s.User = user
		if err := f.s.LoginAllowed(f.ctx, user); err != nil {
			return nil, true, errAuthRefused
		}
		return p.step("AUTH " + p.mech + " " + b64(resp))
	}
	return p.step(b64(resp))
}

// step sends one line of the exchange to the backend and turns its reply
// into go-smtp's: a challenge, success, or the backend's error verbatim.
func (p *passServer) step(line string) ([]byte, bool, error) {
	f := p.f
	if !f.mu.TryLock() {
		return nil, true, errAuthInTx // a BDAT transfer is in progress
	}
	defer f.mu.Unlock()
	if f.inTx {
		return nil, true, errAuthInTx
	}
	if p.steps == 0 {
		f.settle() // an earlier exchange the client cancelled
	}
	if f.back == nil {
		if err := f.open(); err != nil {
			if se, ok := refusal(err); ok {
				return nil, true, se
			}
			return nil, true, errAuthTemp
		}
	}
	bk := f.back
	if p.steps == 0 && !bk.c.SupportsAuth(p.mech) {
		f.s.Log.Warn("login failed: backend error", "user", p.creds.Username, "backend", bk.b.Name, "err", "backend does not offer "+p.mech)
		return nil, true, errAuthTemp
	}
	bk.b.SetDeadline(time.Now().Add(bk.authTimeout()))
	defer bk.b.SetDeadline(time.Time{})
	rep, err := command(bk.b, line)
	bk.saslPending = err == nil && rep.code == 334
	switch {
	case err != nil:
		f.drop(fmt.Errorf("AUTH: %w", err))
		return nil, true, errAuthTemp
	case rep.code == 235:
		bk.authed = true
		f.creds = &p.creds
		f.fc.loggedIn() // the login bound is met
		f.s.LoginSucceeded()
		f.s.Log.Info("login", "user", p.creds.Username, "backend", bk.b.Name)
		return nil, true, nil
	case rep.code == 334 && p.steps < maxChallenges:
		p.steps++
		challenge, err := base64.StdEncoding.DecodeString(strings.Join(rep.lines, ""))
		if err == nil {
			return challenge, false, nil
		}
		f.settle()
		f.s.Log.Warn("login failed: backend error", "user", p.creds.Username, "backend", bk.b.Name, "err", "challenge not base64")
		return nil, true, errAuthTemp
	case rep.code == 334 || rep.code == 421:
		f.drop(fmt.Errorf("%w: AUTH %s answered %s", errBackend, p.mech, rep))
		return nil, true, errAuthTemp
	}
	f.s.Log.Info("login rejected by backend", "user", p.creds.Username, "backend", bk.b.Name)
	f.s.FailDelay(f.ctx)
	return nil, true, rep.err()
}

// settle cancels a SASL exchange the client left half-way (go-smtp
// answers a client's "*" itself), so the backend takes commands again; a
// backend that does not answer the cancel is dropped. The caller holds mu.
func (f *front) settle() {
	if f.back == nil || !f.back.saslPending {
		return
	}
	f.back.saslPending = false
	f.back.b.SetDeadline(time.Now().Add(f.back.authTimeout()))
	defer func() {
		if f.back != nil {
			f.back.b.SetDeadline(time.Time{})
		}
	}()
	if rep, err := command(f.back.b, "*"); err != nil || rep.code/100 == 2 || rep.code == 334 {
		f.drop(errors.New("SASL exchange left open"))
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
