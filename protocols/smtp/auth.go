package smtp

import (
	"errors"
	"fmt"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// AuthMechanisms implements gosmtp.AuthSession. smtp_auth = "off" offers
// none; go-smtp offers none before TLS when require_tls is set.
func (f *front) AuthMechanisms() []string {
	if f.s.SMTPAuth == "off" {
		return nil
	}
	return []string{protocols.MechPlain, protocols.MechLogin}
}

// Auth implements gosmtp.AuthSession. The exchange is decoded here and
// the credentials are tried on the backend (passthrough).
func (f *front) Auth(mech string) (sasl.Server, error) {
	if f.s.SMTPAuth == "off" {
		return nil, gosmtp.ErrAuthUnsupported
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
	return nil, true, a.f.login(a.creds)
}

// login logs in to the backend with the client's credentials. A refusal is
// the backend's reply verbatim (535 5.7.8 ...), after the failure delay; the
// client may try again. A backend connection found gone is replaced once.
func (f *front) login(creds protocols.Credentials) error {
	if !f.mu.TryLock() {
		return errAuthInTx // a BDAT transfer is in progress
	}
	defer f.mu.Unlock()
	f.s.User = creds.Username
	if f.inTx {
		return errAuthInTx
	}
	for retry := true; ; retry = false {
		if f.back == nil {
			if err := f.open(); err != nil {
				return errAuthTemp
			}
		}
		err := f.back.auth(creds)
		var se *gosmtp.SMTPError
		switch {
		case err == nil:
			f.creds = &creds
			f.s.Log.Info("login", "user", creds.Username, "backend", f.back.b.Name)
			return nil
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
