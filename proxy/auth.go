package proxy

import (
	"mailproxy/proxy/auth"
	"mailproxy/proxy/config"
)

// buildAuth reads the files of [auth] mode = "verify": the users file and,
// with backend_login = "master", the master password. In passthrough there
// is nothing to read and sessions get no Authenticate hook (nil).
func (s *Server) buildAuth(a config.AuthConfig) (*auth.Authenticator, error) {
	if a.Mode != "verify" {
		return nil, nil
	}
	opts := auth.Options{UsersFile: a.UsersFile, Normalize: a.RoutingKey}
	if a.BackendLogin == "master" {
		opts.MasterUser, opts.MasterPasswordFile = a.MasterUser, a.MasterPasswordFile
	}
	au, err := auth.New(opts)
	if err != nil {
		return nil, err
	}
	s.log.Info("users loaded", "file", a.UsersFile, "users", au.Users(), "backend_login", a.BackendLogin)
	return au, nil
}
