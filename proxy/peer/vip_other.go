//go:build !linux

package peer

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
)

func newAddresser(string, []netip.Prefix) (addresser, error) {
	return nil, errors.New("peer: vip needs Linux (netlink)")
}

func watchLink(context.Context, string, func(bool)) error {
	return errors.New("peer: watching an interface needs Linux (netlink)")
}

func lockHeartbeatThread() { runtime.LockOSThread() }

func queued(any) bool { return false }

func pollable([]*path) bool { return false }

func (l *loop) runPolled(context.Context) {}
