// Package auth verifies logins against a users file and maps client
// credentials to backend credentials.
//
// The users file is Dovecot's passwd-file format ("user:{SCHEME}hash"
// lines) with the schemes in Schemes. With a master user, the backend is
// logged in to as the master user with the client's name as the SASL
// authorisation identity (Dovecot's master users, RFC 4616 authzid), so the
// client's own password never reaches the backend.
package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"

	"mailproxy/protocols"
)

// The reasons a login is refused; each is a failed login for the client,
// the reason is for the log.
var (
	ErrUnknownUser   = errors.New("unknown user")
	ErrWrongPassword = errors.New("wrong password")
	ErrAuthzid       = errors.New("authorisation identity other than the user's own")
)

// Options configure an Authenticator.
type Options struct {
	// UsersFile is the passwd-file the logins are checked against; required.
	UsersFile string
	// Normalize turns a login name into the key users are matched by (the
	// routing key: lower case, default domain). Default: unchanged.
	Normalize func(string) string
	// MasterUser, when set, is the backend login of every client: SASL
	// PLAIN as MasterUser with the client's name as authzid. "" (default):
	// the client's own credentials go to the backend.
	MasterUser string
	// MasterPasswordFile holds MasterUser's password (white space around
	// it trimmed); required with MasterUser.
	MasterPasswordFile string
	// MaxConcurrent bounds the verifications that run at once, which are
	// slow on purpose and, for ARGON2, take memory; the others wait.
	// Default runtime.GOMAXPROCS(0).
	MaxConcurrent int
}

// Authenticator checks client credentials and says what to log in to the
// backend with. Its files are read by New and Reload; it is safe for
// concurrent use.
type Authenticator struct {
	opts  Options
	state atomic.Pointer[state]
	sem   chan struct{}
}

// state is what one load read; swapped whole by Reload.
type state struct {
	users  *Users
	master protocols.Password
}

// New reads the users file (and the master password file) and returns an
// Authenticator, or the first problem found in them.
func New(opts Options) (*Authenticator, error) {
	if opts.UsersFile == "" {
		return nil, errors.New("auth: no users file")
	}
	if opts.MasterUser != "" && opts.MasterPasswordFile == "" {
		return nil, errors.New("auth: master user without a master password file")
	}
	if opts.Normalize == nil {
		opts.Normalize = func(s string) string { return s }
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = runtime.GOMAXPROCS(0)
	}
	a := &Authenticator{opts: opts, sem: make(chan struct{}, opts.MaxConcurrent)}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload reads the files again and swaps them in at once. On error nothing
// changes: the users loaded before stay in force. (A config reload of the
// proxy builds a new Authenticator instead, so a changed [auth] applies too.)
func (a *Authenticator) Reload() error {
	users, err := LoadUsers(a.opts.UsersFile, a.opts.Normalize)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	st := &state{users: users}
	if a.opts.MasterUser != "" {
		if st.master, err = ReadMasterPassword(a.opts.MasterPasswordFile); err != nil {
			return err
		}
	}
	a.state.Store(st)
	return nil
}

// Users is the number of users loaded.
func (a *Authenticator) Users() int { return a.state.Load().users.Len() }

// ReadMasterPassword reads a master password file: its content with white
// space around it trimmed, which must not be empty.
func ReadMasterPassword(path string) (protocols.Password, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("auth: master password: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", fmt.Errorf("auth: master password file %s is empty", path)
	}
	return protocols.Password(pw), nil
}

// Authenticate checks c against the users file and returns the
// credentials to log in to the backend with: c itself, or with a master
// user the master's, with c's user name as authorisation identity. Any
// error is a failed login (ErrUnknownUser, ErrWrongPassword, ErrAuthzid,
// or ctx's error while waiting for a turn). It has the signature of
// protocols.Session.Authenticate.
//
// A client that names an authorisation identity other than its own user is
// refused: the users file says who may log in, not who may act for whom.
func (a *Authenticator) Authenticate(ctx context.Context, c protocols.Credentials) (protocols.Credentials, error) {
	return a.AuthenticateKey(ctx, a.opts.Normalize(c.Username), c)
}

// AuthenticateKey is Authenticate for a caller that has normalised
// c.Username already (the proxy, which needs the routing key anyway): key
// must be Options.Normalize(c.Username).
func (a *Authenticator) AuthenticateKey(ctx context.Context, key string, c protocols.Credentials) (protocols.Credentials, error) {
	if c.Authzid != "" && a.opts.Normalize(c.Authzid) != key {
		return protocols.Credentials{}, ErrAuthzid
	}
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return protocols.Credentials{}, ctx.Err()
	}
	st := a.state.Load()
	err := st.users.Verify(key, c.Password)
	<-a.sem
	if err != nil {
		return protocols.Credentials{}, err
	}
	if a.opts.MasterUser == "" {
		return protocols.Credentials{Username: c.Username, Password: c.Password}, nil
	}
	return protocols.Credentials{Username: a.opts.MasterUser, Password: st.master, Authzid: c.Username}, nil
}
