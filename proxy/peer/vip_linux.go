package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkVIP manages the addresses with netlink and announces them with
// raw ARP and NDP packets: no shell command and no arping between a
// takeover and the first announcement.
type netlinkVIP struct {
	ifname string
	vips   []netip.Prefix
}

var _ addresser = (*netlinkVIP)(nil)

func newAddresser(ifname string, vips []netip.Prefix) (addresser, error) {
	return &netlinkVIP{ifname: ifname, vips: vips}, nil
}

func (v *netlinkVIP) addr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// No duplicate address detection: the address moves between the
		// nodes on purpose, and DAD would keep it tentative (unusable)
		// for a second or more.
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func (v *netlinkVIP) add() error {
	link, err := netlink.LinkByName(v.ifname)
	if err != nil {
		return fmt.Errorf("interface %s: %w", v.ifname, err)
	}
	var errs []error
	for _, p := range v.vips {
		if err := netlink.AddrReplace(link, v.addr(p)); err != nil {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", p, v.ifname, err))
		}
	}
	return errors.Join(errs...)
}

func (v *netlinkVIP) remove() error {
	link, err := netlink.LinkByName(v.ifname)
	if err != nil {
		return fmt.Errorf("interface %s: %w", v.ifname, err)
	}
	var errs []error
	for _, p := range v.vips {
		err := netlink.AddrDel(link, v.addr(p))
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", p, v.ifname, err))
		}
	}
	return errors.Join(errs...)
}

func (v *netlinkVIP) announce() (int, error) {
	ifi, err := net.InterfaceByName(v.ifname)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", v.ifname, err)
	}
	sent := 0
	var errs []error
	var ac *arp.Client
	var nc *ndp.Conn
	defer func() {
		if ac != nil {
			ac.Close()
		}
		if nc != nil {
			nc.Close()
		}
	}()
	for _, p := range v.vips {
		ip := p.Addr()
		if ip.Is4() {
			if ac == nil {
				if ac, err = arp.Dial(ifi); err != nil {
					errs = append(errs, fmt.Errorf("arp on %s: %w", v.ifname, err))
					continue
				}
			}
			err = gratuitousARP(ac, ifi.HardwareAddr, ip)
		} else {
			if nc == nil {
				if nc, _, err = ndp.Listen(ifi, ndp.LinkLocal); err != nil {
					errs = append(errs, fmt.Errorf("ndp on %s: %w", v.ifname, err))
					continue
				}
			}
			err = unsolicitedNA(nc, ifi.HardwareAddr, ip)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", ip, err))
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
}

// gratuitousARP broadcasts an ARP request for ip from ip, as keepalived
// and arping -U do: every host that caches ip updates it to our hardware
// address, and none answers.
func gratuitousARP(c *arp.Client, hw net.HardwareAddr, ip netip.Addr) error {
	p, err := arp.NewPacket(arp.OperationRequest, hw, ip, ethernet.Broadcast, ip)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	return c.WriteTo(p, ethernet.Broadcast)
}

// unsolicitedNA tells all nodes that ip is at hw now (RFC 4861 §7.2.6),
// with the override flag so caches replace the old address.
func unsolicitedNA(c *ndp.Conn, hw net.HardwareAddr, ip netip.Addr) error {
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: hw}}}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	return c.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes())
}

func (v *netlinkVIP) witness(ip netip.Addr, timeout time.Duration) bool {
	ifi, err := net.InterfaceByName(v.ifname)
	if err != nil {
		return false
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	_, err = c.Resolve(ip)
	return err == nil
}

// linkUp reports whether the interface is up and has carrier.
func linkUp(a *netlink.LinkAttrs) bool {
	return a.Flags&net.FlagUp != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0
}

// watchLink reports the interface's state now and on every change until
// ctx is done. A missing interface counts as down.
func watchLink(ctx context.Context, name string, report func(up bool)) error {
	ch := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{}); err != nil {
		return fmt.Errorf("watch %s: %w", name, err)
	}
	defer close(done)
	if l, err := netlink.LinkByName(name); err != nil {
		report(false)
	} else {
		report(linkUp(l.Attrs()))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch %s: netlink subscription ended", name)
			}
			if u.Attrs().Name == name {
				report(u.Header.Type != unix.RTM_DELLINK && linkUp(u.Attrs()))
			}
		}
	}
}

// lockHeartbeatThread pins the calling goroutine to its own OS thread and,
// where allowed (CAP_SYS_NICE, as root), raises that thread's priority, so
// that heartbeats keep their pace on a host whose CPUs are saturated. The
// thread ends with the goroutine (it is never unlocked), so the raised
// priority never leaks to other goroutines.
func lockHeartbeatThread() {
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -10)
}

// queued reports whether the socket holds a datagram not read yet.
func queued(c any) bool {
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}
