package smtp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// errNoPlain is a login with an authorisation identity (a master user's)
// to a backend without AUTH PLAIN: AUTH LOGIN cannot carry it.
var errNoPlain = errors.New(`backend has no AUTH PLAIN, which a login with an authorisation identity (backend_login = "master") needs`)

// AuthMechanisms implements gosmtp.AuthSession. smtp_auth = "off" offers
// none, "optional" (the default) offers AUTH when the backend announced
// it, "required" always; go-smtp offers none before TLS when require_tls
// is set.
func (f *front) AuthMechanisms() []string {
	if !f.authOffered() {
		return nil
	}
	return append([]string{protocols.MechPlain, protocols.MechLogin}, f.passMechs()...)
}

func (f *front) authOffered() bool {
	switch f.s.SMTPAuth {
	case "off":
		return false
	case "optional":
		return f.backAuth.Load()
	}
	return true
}

// Auth implements gosmtp.AuthSession. The exchange is decoded here and
// the credentials are checked (Session.Authenticate) and tried on the
// backend.
func (f *front) Auth(mech string) (sasl.Server, error) {
	if !f.authOffered() {
		return nil, gosmtp.ErrAuthUnsupported
	}
	if protocols.IsPassthrough(mech) {
		for _, m := range f.passMechs() {
			if strings.EqualFold(m, mech) {
				return &passServer{f: f, mech: m}, nil
			}
		}
		return nil, gosmtp.ErrAuthUnknownMechanism
	}
	a := &authServer{f: f}
	srv, err := protocols.NewSASLServer(mech, &a.creds)
	if err != nil {
		return nil, gosmtp.ErrAuthUnknownMechanism
	}
	a.inner = srv
	return a, nil
}

// authServer runs the client's SASL exchange and, once it has the
// credentials, the backend login, whose answer is the client's.
type authServer struct {
	f     *front
	inner sasl.Server
	creds protocols.Credentials
}

func (a *authServer) Next(resp []byte) ([]byte, bool, error) {
	challenge, done, err := a.inner.Next(resp)
	switch {
	case err != nil:
		a.f.s.FailDelay(a.f.ctx)
		return nil, true, errAuthInvalid
	case !done:
		return challenge, false, nil
	}
	if err := a.f.login(a.creds); err != nil {
		return nil, true, err
	}
	a.f.fc.loggedIn() // the login bound is met
	return nil, true, nil
}

// login logs in to the backend with the credentials that
// Session.BackendCredentials gives for the client's. A refusal by mailproxy
// is 535 5.7.8, one by the backend its reply verbatim (535 5.7.8 ...), both
// after the failure delay; the client may try again. A backend connection
// found gone is replaced once.
func (f *front) login(creds protocols.Credentials) error {
	if !f.mu.TryLock() {
		return errAuthInTx // a BDAT transfer is in progress
	}
	defer f.mu.Unlock()
	f.s.User = creds.Username
	if f.inTx {
		return errAuthInTx
	}
	if err := f.s.LoginAllowed(f.ctx, creds.Username); err != nil {
		return errAuthRefused
	}
	f.settle()
	back, err := f.s.BackendCredentials(f.ctx, creds)
	if errors.Is(err, protocols.ErrAuthUnavailable) {
		return errAuthTemp
	}
	if err != nil {
		f.s.FailDelay(f.ctx)
		return errAuthInvalid
	}
	if back.Backend != "" && f.back != nil && f.back.b.Name != back.Backend {
		// The check chose another backend than the one picked at EHLO.
		f.back.quit()
		f.back, f.inTx = nil, false
	}
	for retry := true; ; retry = false {
		if f.back == nil {
			if err := f.open(); err != nil {
				if se, ok := refusal(err); ok {
					return se
				}
				return errAuthTemp
			}
		}
		err := f.back.auth(back)
		var se *gosmtp.SMTPError
		switch {
		case err == nil:
			f.creds = &back
			f.s.Log.Info("login", "user", creds.Username, "backend", f.back.b.Name)
			f.s.LoginSucceeded()
			return nil
		case errors.Is(err, errNoPlain):
			f.s.Log.Warn("login failed: backend error", "user", creds.Username, "backend", f.back.b.Name, "err", err)
			return errAuthTemp
		case errors.As(err, &se) && se.Code != 421:
			f.s.Log.Info("login rejected by backend", "user", creds.Username, "backend", f.back.b.Name)
			f.s.FailDelay(f.ctx)
			return se
		}
		f.drop(fmt.Errorf("AUTH: %w", err))
		if !retry {
			return errAuthTemp
		}
	}
}
