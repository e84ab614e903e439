package peer

import (
	"fmt"
	"net/netip"
	"time"
)

// The announcement schedule after an address is added (or a conflict is
// won): at once, then again after each gap, then every announceRefresh
// while the node stays active. A client that missed the first gratuitous
// ARP (a busy switch, a lost frame) gets the next a moment later; the slow
// refresh heals caches that a partition or a flapping link left pointing
// at the other node. keepalived's garp_master_repeat/garp_master_refresh
// are the same idea.
var announceGaps = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, time.Second}

const announceRefresh = 10 * time.Second

// witnessTimeout bounds the ARP question to [peer] witness.
const witnessTimeout = 200 * time.Millisecond

// addresser puts the virtual addresses on the interface and announces
// them. vip_linux.go implements it with netlink, ARP and NDP.
type addresser interface {
	add() error
	remove() error
	// announce sends one gratuitous ARP per IPv4 address and one
	// unsolicited neighbour advertisement per IPv6 address; it returns how
	// many went out.
	announce() (int, error)
	// witness reports whether ip answers an ARP request on the interface.
	witness(ip netip.Addr, timeout time.Duration) bool
}

// parseVIPs reads [peer] vip; config validation has checked the syntax.
func parseVIPs(vips []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(vips))
	for _, v := range vips {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("peer: vip %q: %w", v, err)
		}
		out = append(out, p)
	}
	return out, nil
}
