package proxy

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"mailproxy/proxy/config"
	"mailproxy/routing"
)

// metrics are the server's Prometheus metrics, in a registry of its own
// (no global state: two servers in one test binary do not collide). The
// gauges are read from the live state at scrape time; only what has no
// state to read (logins, bytes) is counted as it happens.
type metrics struct {
	reg      *prometheus.Registry
	logins   *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	sessions *prometheus.CounterVec
	store    *storeMetrics
}

// The descriptions of the scrape-time gauges; read-only.
var (
	descSessions = prometheus.NewDesc("mailproxy_sessions",
		"Open client sessions, logged in or not.", []string{"listener", "protocol"}, nil)
	descBackendSessions = prometheus.NewDesc("mailproxy_backend_sessions",
		"Live sessions on a backend, all protocols.", []string{"pool", "backend"}, nil)
	descBackendUsers = prometheus.NewDesc("mailproxy_backend_users",
		"Users with a live session on a backend.", []string{"pool", "backend"}, nil)
	descParked = prometheus.NewDesc("mailproxy_relay_parked_directions",
		"Relay directions parked: quiet, with no goroutine, their socket watched by the poller (two per idle session).", nil, nil)
	descBackendState = prometheus.NewDesc("mailproxy_backend_state",
		"1 for the state a backend is in for a protocol (up, down, draining, disabled), 0 for the others.",
		[]string{"pool", "backend", "protocol", "state"}, nil)
)

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailproxy_logins_total",
			Help: "Sessions that logged in (ok), or tried and ended without (failed).",
		}, []string{"listener", "protocol", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailproxy_relay_bytes_total",
			Help: "Bytes relayed after login (SMTP: of the whole session); in is client to backend.",
		}, []string{"listener", "backend", "direction"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailproxy_sessions_total",
			Help: "Client sessions ended, by outcome (logout, closed, login_timeout, idle_timeout, write_timeout, closed_by_proxy, tls_handshake_failed, error, relay_error, panic), and connections refused at a limit (refused).",
		}, []string{"listener", "outcome"}),
	}
	m.store = newStoreMetrics(m.reg)
	m.reg.MustRegister(m.logins, m.bytes, m.sessions, stateCollector{s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MetricsHandler serves the server's metrics in the Prometheus text format
// (GET /metrics of the admin API).
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// sessionEnded counts a finished session: a login when it reached the
// relay (or logged in without one, SMTP), a failed one when it named a
// user and never got there; its bytes, and its outcome.
func (m *metrics) sessionEnded(lc *config.ListenerConfig, backend string, loggedIn, triedLogin bool, res relayResult, outcome string) {
	switch {
	case loggedIn:
		m.logins.WithLabelValues(lc.Name, lc.Protocol, "ok").Inc()
	case triedLogin:
		m.logins.WithLabelValues(lc.Name, lc.Protocol, "failed").Inc()
	}
	if backend != "" && (loggedIn || res.up > 0 || res.down > 0) {
		m.bytes.WithLabelValues(lc.Name, backend, "in").Add(float64(res.up))
		m.bytes.WithLabelValues(lc.Name, backend, "out").Add(float64(res.down))
	}
	m.sessions.WithLabelValues(lc.Name, outcomeLabel(outcome)).Inc()
}

// refused counts a connection turned away at a limit.
func (m *metrics) refused(lc *config.ListenerConfig) {
	m.sessions.WithLabelValues(lc.Name, "refused").Inc()
}

// outcomeLabel turns an end line's outcome into a label value from a
// fixed set: the detail after a colon ("error: ...") is left out.
func outcomeLabel(outcome string) string {
	word, _, _ := strings.Cut(outcome, ":")
	return strings.ReplaceAll(word, " ", "_")
}

// stateCollector reads sessions and backend states at scrape time.
type stateCollector struct{ s *Server }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descBackendSessions, descBackendUsers, descBackendState, descParked} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	open := map[string]int{}
	s.mu.Lock()
	for ss := range s.live {
		open[ss.lc.Name]++
	}
	s.mu.Unlock()
	for _, lc := range s.Config().Listeners {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(open[lc.Name]), lc.Name, lc.Protocol)
	}
	ch <- prometheus.MustNewConstMetric(descParked, prometheus.GaugeValue, float64(s.ParkedDirections()))
	states := []routing.State{routing.Up, routing.Down, routing.Draining, routing.Disabled}
	for _, p := range s.Pools() {
		for _, st := range p.Status() {
			ch <- prometheus.MustNewConstMetric(descBackendSessions, prometheus.GaugeValue, float64(st.Sessions), p.Name, st.Name)
			ch <- prometheus.MustNewConstMetric(descBackendUsers, prometheus.GaugeValue, float64(st.Users), p.Name, st.Name)
			b := p.Backend(st.Name)
			for protoName := range st.Health {
				proto, err := routing.ParseProtocol(protoName)
				if err != nil {
					continue
				}
				now := p.State(b, proto)
				for _, state := range states {
					v := 0.0
					if state == now {
						v = 1
					}
					ch <- prometheus.MustNewConstMetric(descBackendState, prometheus.GaugeValue, v, p.Name, st.Name, protoName, state.String())
				}
			}
		}
	}
}

// RegisterMetrics adds c to the server's registry, for metrics the
// server does not own (the pair's, peer.Node.Collector).
func (s *Server) RegisterMetrics(c prometheus.Collector) error { return s.metrics.reg.Register(c) }
