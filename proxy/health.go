package proxy

import (
	"context"
	"time"

	"mailproxy/routing"
)

// startHealth starts one probe loop per backend and protocol it serves.
// Each loop connects, lets the protocol read the greeting and end politely,
// and tells routing, which applies rise and fall.
func (s *Server) startHealth(ctx context.Context) {
	for _, pc := range s.cfg.Pools {
		pool := s.pools[pc.Name]
		for _, b := range pool.Backends() {
			info := b.Data.(*backendInfo)
			for proto, addr := range info.addr {
				h := s.handlers[routing.Protocol(proto).String()]
				if addr == "" || h == nil || info.cfg.Disabled {
					continue
				}
				s.bgDone.Add(1)
				go func() {
					defer s.bgDone.Done()
					s.probeLoop(ctx, pool, b, routing.Protocol(proto), pc.Health)
				}()
			}
		}
	}
}

func (s *Server) probeLoop(ctx context.Context, pool *routing.Pool, b *routing.Backend, proto routing.Protocol, hc HealthConfig) {
	t := time.NewTicker(hc.Interval.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.probe(ctx, b, proto, hc.Timeout.Duration)
		reason := "check passed"
		if err != nil {
			reason = err.Error()
		}
		pool.Observe(b, proto, err == nil, reason)
	}
}

// probe runs one check of b for proto under timeout.
func (s *Server) probe(ctx context.Context, b *routing.Backend, proto routing.Protocol, timeout time.Duration) error {
	info := b.Data.(*backendInfo)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := s.dial(ctx, "tcp", info.addr[proto])
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	return s.handlers[proto.String()].Probe(ctx, conn)
}
