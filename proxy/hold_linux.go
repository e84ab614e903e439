package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// holdBacklog is the accept queue a held socket gets when it starts
// listening; the kernel caps it at net.core.somaxconn.
const holdBacklog = 4096

// heldSocket is a TCP socket bound to a listener's address but not
// listening: the port is ours, a SYN to it is answered with a reset, and
// listening on it later cannot fail on the address.
type heldSocket struct{ fd int }

// holdTCP binds addr with IP_FREEBIND, so an address that is not on this
// host yet (the virtual address a standby does not hold) can be bound. It
// binds without SO_REUSEADDR first, which keeps the port ours alone; when
// that fails (connections of our last active period linger in TIME_WAIT),
// it binds with it, as a listener would.
func holdTCP(addr string) (*heldSocket, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		ta, rerr := net.ResolveTCPAddr("tcp", addr)
		if rerr != nil {
			return nil, rerr
		}
		ap = ta.AddrPort()
	}
	h, err := bindHeld(ap, false)
	if errors.Is(err, unix.EADDRINUSE) {
		h, err = bindHeld(ap, true)
	}
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", addr, err)
	}
	return h, nil
}

func bindHeld(ap netip.AddrPort, reuse bool) (*heldSocket, error) {
	ip := ap.Addr().Unmap()
	var family int
	var sa unix.Sockaddr
	if ip.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16(), ZoneId: zoneID(ip.Zone())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	opts := [][2]int{{unix.SOL_IP, unix.IP_FREEBIND}}
	if family == unix.AF_INET6 {
		opts = append(opts, [2]int{unix.SOL_IPV6, unix.IPV6_FREEBIND})
	}
	if reuse {
		opts = append(opts, [2]int{unix.SOL_SOCKET, unix.SO_REUSEADDR})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], 1); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &heldSocket{fd: fd}, nil
}

// listen turns the held socket into a listener; the socket is consumed.
func (h *heldSocket) listen() (net.Listener, error) {
	f := os.NewFile(uintptr(h.fd), "held")
	defer f.Close() // FileListener keeps its own duplicate
	// Accepted connections inherit SO_REUSEADDR; without it, those still
	// closing when we step down would keep the next hold from binding.
	if err := unix.SetsockoptInt(h.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("setsockopt: %w", err)
	}
	if err := unix.Listen(h.fd, holdBacklog); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return net.FileListener(f)
}

func (h *heldSocket) close() { unix.Close(h.fd) }

func zoneID(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}
