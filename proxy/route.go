package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"

	"mailproxy/protocols"
	"mailproxy/proxy/config"
)

// This file is routing one recipient at a time, for LMTP: a delivery
// session is tied to no user, and each recipient is placed on its own.
// Routing stays the one routing.Pool.Acquire every session uses; the
// protocol never sees it, only a protocols.Lease with the backend's name.

// route is Session.Route: it places user as an IMAP login of user would be
// placed (the pool gives LMTP the imap policy, and every protocol follows
// a live binding), and holds the user there until the lease is released.
// Connecting is a separate step (Lease.Dial), so that a protocol carries
// the recipients of one backend on one connection.
func (ss *session) route(ctx context.Context, user string) (*protocols.Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lease, err := ss.pool.Acquire(ctx, ss.proto, ss.st.cfg.Auth.RoutingKey(user))
	if err != nil {
		ss.log.Warn("no backend available", "user", user)
		return nil, fmt.Errorf("pick backend: %w", err)
	}
	dial := func(ctx context.Context, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
		return ss.connectLease(ctx, lease, hello, true)
	}
	return protocols.NewLease(lease.Backend.Name, dial, lease.Release), nil
}

// listenOn opens a listener: TCP on host:port, or a unix socket on an
// absolute path (lmtp listeners), replacing a stale socket file left by an
// earlier run. Anything else at that path is left alone and is an error.
func (s *Server) listenOn(addr string) (net.Listener, error) {
	if !config.IsUnixPath(addr) {
		return s.listen("tcp", addr)
	}
	if fi, err := os.Lstat(addr); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if c, err := net.Dial("unix", addr); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen unix %s: a server is listening there", addr)
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return s.listen("unix", addr)
}
