package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"mailproxy/proxy/config"
	"os"

	"mailproxy/proxy/auth"
	"mailproxy/routing"
)

// setupAuth reads the files of [auth] mode = "verify": the users file and,
// with backend_login = "master", the master password. In passthrough there
// is nothing to read and sessions get no Authenticate hook.
func (s *Server) setupAuth() error {
	if err := s.setupLoginChecks(); err != nil {
		return err
	}
	a := s.cfg.Auth
	if a.Mode != "verify" {
		return nil
	}
	opts := auth.Options{UsersFile: a.UsersFile, Normalize: s.cfg.Auth.RoutingKey}
	if a.BackendLogin == "master" {
		opts.MasterUser, opts.MasterPasswordFile = a.MasterUser, a.MasterPasswordFile
	}
	au, err := auth.New(opts)
	if err != nil {
		return err
	}
	s.auth = au
	s.log.Info("users loaded", "file", a.UsersFile, "users", au.Users(), "backend_login", a.BackendLogin)
	return nil
}

// ReloadAuth re-reads the users file and the master password (on SIGHUP)
// and swaps them in at once. On error the ones loaded before stay in use.
// In passthrough it does nothing.
func (s *Server) ReloadAuth() error {
	if s.auth == nil {
		return nil
	}
	if err := s.auth.Reload(); err != nil {
		return err
	}
	s.log.Info("users reloaded", "file", s.cfg.Auth.UsersFile, "users", s.auth.Users())
	return nil
}

// CheckAuthFiles checks the users file of auth.mode = "verify" when it
// exists (`mailproxy check`): its syntax, schemes and duplicate users. A
// file that is not there is no error, so that a config can be checked
// away from the machine it runs on; `run` needs it.
func CheckAuthFiles(cfg *config.Config) error {
	a := cfg.Auth
	if a.Mode != "verify" || a.UsersFile == "" {
		return nil
	}
	if _, err := os.Stat(a.UsersFile); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	norm := func(s string) string { return routing.Key(s, a.UsernameCase == "keep", a.DefaultDomain) }
	if _, err := auth.LoadUsers(a.UsersFile, norm); err != nil {
		return fmt.Errorf("auth.users_file: %w", err)
	}
	return nil
}
