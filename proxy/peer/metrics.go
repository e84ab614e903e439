package peer

import "github.com/prometheus/client_golang/prometheus"

// The pair's metrics, read from Status at scrape time; read-only.
var (
	descActive = prometheus.NewDesc("mailproxy_peer_active",
		"1 while this node is active (listeners and addresses in force), else 0.", nil, nil)
	descPeerAlive = prometheus.NewDesc("mailproxy_peer_alive",
		"1 while the peer is heard within dead_after, else 0.", nil, nil)
	descLinkUp = prometheus.NewDesc("mailproxy_peer_link_up",
		"1 while [peer] interface is up with carrier (always 1 without one).", nil, nil)
	descHeard = prometheus.NewDesc("mailproxy_peer_heartbeats_received_total",
		"Heartbeats accepted from the peer.", nil, nil)
	descRejected = prometheus.NewDesc("mailproxy_peer_heartbeats_rejected_total",
		"Datagrams refused on the heartbeat socket: bad MAC, replay, own name, malformed.", nil, nil)
	descAnnounce = prometheus.NewDesc("mailproxy_peer_announcements_total",
		"Gratuitous ARPs and unsolicited neighbour advertisements sent for [peer] vip.", nil, nil)
	descTakeovers = prometheus.NewDesc("mailproxy_peer_takeovers_total",
		"Times this node became active.", nil, nil)
	descConflicts = prometheus.NewDesc("mailproxy_peer_conflicts_total",
		"Times both nodes were found active (a healed split); the lower-ranked one steps down.", nil, nil)
)

// Collector returns the node's metrics for a Prometheus registry
// (proxy.Server.RegisterMetrics).
func (n *Node) Collector() prometheus.Collector { return collector{n} }

type collector struct{ n *Node }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descPeerAlive, descLinkUp, descHeard, descRejected, descAnnounce, descTakeovers, descConflicts} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.Status()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(descActive, gauge, b(st.Applied == Active.String()))
	ch <- prometheus.MustNewConstMetric(descPeerAlive, gauge, b(st.Peer.Alive))
	ch <- prometheus.MustNewConstMetric(descLinkUp, gauge, b(st.LinkUp))
	ch <- prometheus.MustNewConstMetric(descHeard, counter, float64(st.Peer.Heard))
	ch <- prometheus.MustNewConstMetric(descRejected, counter, float64(st.Peer.Rejected))
	ch <- prometheus.MustNewConstMetric(descAnnounce, counter, float64(st.Announcements))
	ch <- prometheus.MustNewConstMetric(descTakeovers, counter, float64(st.Takeovers))
	ch <- prometheus.MustNewConstMetric(descConflicts, counter, float64(st.Conflicts))
}
