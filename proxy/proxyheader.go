package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/proxy/config"
	"net"
	"net/netip"
	"time"

	"mailproxy/protocols"
	"mailproxy/proxy/proxyproto"
)

// This file is the PROXY protocol in the server. Inbound, on a listener with
// proxy_protocol = true: only the balancers in proxy_protocol_trusted may
// connect, every connection starts with their header, and the header's
// source is the client from then on (a proxyproto.Conn reports it as
// RemoteAddr, so logs, limits, ID and XCLIENT all see it). Outbound, to a
// backend with send_proxy_protocol: the header goes first, before TLS.

// proxyHeaderTimeout bounds the wait for a balancer's header. A balancer
// sends it with the connection's first bytes, so this only has to outlast
// a slow network; a peer that sends nothing is not speaking the protocol.
const proxyHeaderTimeout = 5 * time.Second

// fromBalancer reports whether c comes from an address the listener trusts
// to send a PROXY header. The list is a handful of networks, parsed here
// rather than kept apart from the config it belongs to.
func fromBalancer(lc *config.ListenerConfig, c net.Conn) bool {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap().WithZone("")
	for _, n := range lc.ProxyProtocolTrusted {
		if p, err := config.ParseTrusted(n); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}

// admitProxied runs first in the goroutine of a connection to a
// proxy_protocol listener, from a trusted balancer: it reads the header
// and counts the client it names against max_connections_per_ip (the
// balancer's own address says nothing about a client, so accept did not
// count it). It returns the connection with the client's addresses and the
// IP counted, or nil when the connection was closed.
func (s *Server) admitProxied(st *state, lc *config.ListenerConfig, c net.Conn) (net.Conn, string) {
	pc, err := readProxyHeader(c, min(proxyHeaderTimeout, st.cfg.Limits.LoginTimeout.Duration))
	if err != nil {
		// A balancer's plain TCP check connects and closes without a
		// byte; that is no news.
		lvl := slog.LevelWarn
		if errors.Is(err, io.EOF) {
			lvl = slog.LevelDebug
		}
		s.log.Log(context.Background(), lvl, "connection closed: no valid PROXY header", "listener", lc.Name, "via", c.RemoteAddr().String(), "err", err)
		c.Close()
		return nil, ""
	}
	if s.closed.Load() { // shut down while the header was on its way
		c.Close()
		return nil, ""
	}
	ip := remoteIP(pc)
	s.mu.Lock()
	over := s.perIP[ip] >= st.cfg.Limits.MaxConnectionsPerIP
	if !over {
		s.perIP[ip]++
	}
	s.mu.Unlock()
	if over {
		s.refusedLimit.warn(s.log, "connection refused: limit reached", "listener", lc.Name, "client", pc.RemoteAddr().String(), "via", c.RemoteAddr().String())
		s.metrics.refused(lc)
		if lc.TLS != "implicit" {
			say(pc, s.handlers[lc.Protocol].Notice(protocols.NoticeBusy))
		}
		pc.Close()
		return nil, ""
	}
	return pc, ip
}

// readProxyHeader reads the header off c, which must be the bare accepted
// connection, and returns c with the addresses it names.
func readProxyHeader(c net.Conn, timeout time.Duration) (net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	h, err := proxyproto.ReadHeader(c)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	return proxyproto.NewConn(c, h), nil
}

// viaAttrs names the balancer a session came through, for its start line.
func viaAttrs(c net.Conn) []any {
	if pc, ok := c.(*proxyproto.Conn); ok {
		return []any{"via", pc.NetConn().RemoteAddr().String()}
	}
	return nil
}

// clientTLS is the TLS version of the client's connection ("TLSv1.3"), or
// "" while it is plain. An implicit-TLS listener's is known here; after
// STARTTLS only if the protocol has put its TLS conn in Session.Conn.
func (ss *session) clientTLS() string {
	conns := []net.Conn{ss.client}
	if ss.ps != nil {
		conns = append(conns, ss.ps.Conn)
	}
	for _, c := range conns {
		if tc, ok := c.(*tls.Conn); ok {
			return proxyproto.TLSVersion(tc.ConnectionState().Version)
		}
	}
	return ""
}

// writeProxyHeader sends a backend with send_proxy_protocol = version ("v1"
// or "v2"; "" sends nothing) the header for a client at src that connected
// to dst, over TLS of tlsVersion unless that is "" (said in v2 only),
// under ctx's deadline. With nil addresses it is the header of a
// connection mailproxy opened for itself (a health probe): v2 LOCAL, v1
// "PROXY UNKNOWN".
func writeProxyHeader(ctx context.Context, conn net.Conn, version string, src, dst net.Addr, tlsVersion string) error {
	var v int
	switch version {
	case "":
		return nil
	case "v1":
		v = 1
	case "v2":
		v = 2
	default:
		return fmt.Errorf("send_proxy_protocol %q", version)
	}
	h := proxyproto.NewHeader(v, src, dst)
	h.TLSVersion = tlsVersion
	b, err := h.Format()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
	}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("send PROXY header: %w", err)
	}
	return nil
}
