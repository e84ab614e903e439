package proxy

import (
	"context"
	"fmt"
	"mailproxy/proxy/config"
	"time"

	"mailproxy/protocols"
	"mailproxy/routing"
	mtls "mailproxy/tls"
)

// startHealth starts one check loop per backend and protocol it serves, as
// the pool's [pool.health] says. Disabled backends are not checked, nor
// protocols with no handler. The loops end when ctx does.
//
// A check only reports to routing, which owns the rise/fall state (a
// failed dial from a real session reports there too): the timing the
// operator gets is "down within fall × interval + timeout of a crash, up
// within rise × interval of a return".
func (st *state) startHealth(s *Server, ctx context.Context) {
	ctx, st.health.stop = context.WithCancel(ctx)
	for _, pc := range st.cfg.Pools {
		pool := st.pools[pc.Name]
		for _, b := range pool.Backends() {
			info := b.Data().(*backendInfo)
			for i, addr := range info.addr {
				proto := routing.Protocol(i)
				if addr == "" || s.handlers[proto.String()] == nil || info.cfg.Disabled {
					continue
				}
				st.health.done.Go(func() { s.checkLoop(ctx, pool, b, proto, pc.Health) })
			}
		}
	}
}

// checkLoop checks b for proto at once and then every interval until ctx
// ends. A check that outlasts the interval delays the next one rather than
// overlapping it.
func (s *Server) checkLoop(ctx context.Context, pool *routing.Pool, b *routing.Backend, proto routing.Protocol, hc config.HealthConfig) {
	t := time.NewTicker(hc.Interval.Duration)
	defer t.Stop()
	for {
		s.check(ctx, pool, b, proto, hc.Timeout.Duration)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check runs one probe and reports it to routing.
func (s *Server) check(ctx context.Context, pool *routing.Pool, b *routing.Backend, proto routing.Protocol, timeout time.Duration) {
	err := s.probe(ctx, b, proto, timeout)
	if ctx.Err() != nil {
		return // shutting down: a cut-off check says nothing about the backend
	}
	if err != nil {
		s.log.Debug("health check failed", "pool", pool.Name, "backend", b.Name, "protocol", proto.String(), "err", err)
		pool.Observe(b, proto, false, "check failed: "+err.Error())
		return
	}
	pool.Observe(b, proto, true, "check passed")
}

// probe connects to b for proto under timeout (with TLS first when the
// backend's tls is implicit), lets the protocol read the greeting and end
// politely, and closes.
func (s *Server) probe(ctx context.Context, b *routing.Backend, proto routing.Protocol, timeout time.Duration) error {
	info := b.Data().(*backendInfo)
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := s.dial(tctx, "tcp", info.addr[proto])
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	conn := raw
	defer func() { conn.Close() }() // the TLS conn once there is one: it says close_notify
	// The deadline ends a slow check with a timeout error; shutdown (ctx,
	// not tctx) does not wait for it.
	raw.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	// A backend port that wants a PROXY header refuses a probe without one.
	if err := writeProxyHeader(tctx, raw, info.cfg.SendProxyProtocol, nil, nil, ""); err != nil {
		return err
	}
	if info.cfg.TLS == "implicit" {
		tc, err := mtls.Handshake(tctx, conn, info.tls[proto], false)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		conn = tc
	}
	h := s.handlers[proto.String()]
	if mp, ok := h.(protocols.MechProber); ok && s.state().passthrough() && s.mechs.due(b, proto, time.Now()) {
		pb := protocols.NewBackend(conn, b.Name, info.addr[proto], nil)
		pb.TLS, pb.StartTLS = info.tls[proto], info.cfg.TLS == "starttls"
		mechs, err := mp.ProbeMechs(tctx, pb)
		conn = pb.Conn // the TLS conn after STARTTLS
		if err == nil {
			s.mechs.set(b, proto, mechs, time.Now())
		}
		return err
	}
	return h.Probe(tctx, conn)
}
