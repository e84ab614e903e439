package proxy

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Keep-alive on client connections, as Go's default sets it on each
// accepted one (15 s idle, 15 s between probes, 9 probes).
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

// listenTCP is the default Options.Listen. Go's accept sets four
// keep-alive options on every connection, four system calls per session;
// Linux copies a listening socket's options to the sockets it accepts, so
// they are set once here instead, with Go's per-connection setting off.
// (TCP_NODELAY Go sets on every connection whatever the listener says.)
func listenTCP(network, addr string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		lc := net.ListenConfig{Control: keepAliveListener, KeepAlive: -1}
		return lc.Listen(context.Background(), network, addr)
	}
	return net.Listen(network, addr)
}

// keepAliveListener sets the keep-alive options on a listening socket.
func keepAliveListener(_, _ string, c syscall.RawConn) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		for _, o := range [][3]int{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
		} {
			if err == nil {
				err = unix.SetsockoptInt(int(fd), o[0], o[1], o[2])
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}
