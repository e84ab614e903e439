package protocols

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
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

// The ways a SASL exchange with a client ends without credentials; each is
// the client's, answered with the protocol's failure or syntax reply.
var (
	ErrSASLFailed    = errors.New("SASL exchange failed") // the responses made no credentials
	ErrSASLCancelled = errors.New("authentication cancelled")
	ErrSASLEncoding  = errors.New("invalid base64 response")
)

// SASLExchange runs srv from the client's initial response ir (nil: none)
// until it has the credentials. challenge sends one challenge and returns
// the client's answer, or an error that ends the exchange as it is.
func SASLExchange(srv sasl.Server, ir []byte, challenge func([]byte) ([]byte, error)) error {
	resp := ir
	for {
		ch, done, err := srv.Next(resp)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrSASLFailed, err)
		}
		if done {
			return nil
		}
		if resp, err = challenge(ch); err != nil {
			return err
		}
	}
}

// ReadSASLResponse reads a client's answer to a challenge in IMAP and POP3
// (RFC 9051 §6.2.2, RFC 5034 §4): a base64 line, or "*" to cancel
// (ErrSASLCancelled). A line over max is ErrLineTooLong.
func ReadSASLResponse(r *bufio.Reader, max int) ([]byte, error) {
	line, err := ReadLine(r, max)
	switch {
	case err != nil:
		return nil, err
	case string(line) == "*":
		return nil, ErrSASLCancelled
	}
	resp, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil {
		return nil, ErrSASLEncoding
	}
	return resp, nil
}
