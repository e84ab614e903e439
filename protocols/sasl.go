package protocols

import (
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// The SASL mechanisms mailproxy accepts from clients. Both carry the
// password itself, which passthrough needs to log in to the backend.
const (
	MechPlain = "PLAIN"
	MechLogin = "LOGIN"
)

// ErrUnknownMechanism is returned by NewSASLServer for other mechanisms.
var ErrUnknownMechanism = errors.New("unsupported SASL mechanism")

// NewSASLServer returns a server for mech that fills creds when the
// exchange completes. PLAIN is go-sasl's; LOGIN (draft-murchison-sasl-login)
// is small and go-sasl no longer has a server for it.
func NewSASLServer(mech string, creds *Credentials) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case MechPlain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if username == "" {
				return errors.New("empty username")
			}
			if identity == username {
				identity = ""
			}
			*creds = Credentials{Username: username, Password: Password(password), Authzid: identity}
			return nil
		}), nil
	case MechLogin:
		return &loginServer{creds: creds}, nil
	}
	return nil, ErrUnknownMechanism
}

// loginServer is the LOGIN mechanism: ask for the user name, then the
// password, each as a plain challenge.
type loginServer struct {
	creds *Credentials
	step  int
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step++
		if response != nil { // initial response carries the user name
			s.creds.Username = string(response)
			s.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.creds.Username = string(response)
		s.step++
		return []byte("Password:"), false, nil
	case 2:
		s.creds.Password = Password(response)
		s.step++
		if s.creds.Username == "" {
			return nil, true, errors.New("empty username")
		}
		return nil, true, nil
	}
	return nil, true, errors.New("unexpected response")
}
