// Package sdnotify tells systemd how a Type=notify service is doing
// (sd_notify(3)): READY=1 once serving, RELOADING=1 and READY=1 around a
// reload, STOPPING=1 on the way out, WATCHDOG=1 as a sign of life. It
// speaks the protocol itself, one datagram per message on the unix socket
// that $NOTIFY_SOCKET names; without that variable every call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends state changes to the service manager. The zero value
// (and a nil *Notifier) sends nothing.
type Notifier struct {
	addr *net.UnixAddr // nil: not run by systemd
}

// FromEnv returns the Notifier for $NOTIFY_SOCKET ("@name" is an abstract
// socket). It does not unset the variable: a child mailproxy never starts.
func FromEnv() *Notifier {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" || name[0] != '/' && name[0] != '@' {
		return &Notifier{}
	}
	return &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
}

// Enabled reports whether messages go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends one message of newline-separated VAR=value assignments.
func (n *Notifier) Send(state string) error {
	if !n.Enabled() {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Ready says the service is up (and a reload done).
func (n *Notifier) Ready() error { return n.Send("READY=1") }

// Reloading says a reload starts; systemd wants the CLOCK_MONOTONIC time
// with it (Type=notify-reload, and plain Type=notify since v253).
func (n *Notifier) Reloading() error {
	return n.Send("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
}

// Stopping says the service is shutting down.
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Status sets the one-line status systemctl status shows.
func (n *Notifier) Status(s string) error {
	return n.Send("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}

// Watchdog is a sign of life for WatchdogSec=.
func (n *Notifier) Watchdog() error { return n.Send("WATCHDOG=1") }

// WatchdogInterval is how often to call Watchdog: half of $WATCHDOG_USEC
// when the watchdog is on for this process, else 0.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
