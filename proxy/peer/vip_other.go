//go:build !linux

package peer

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"time"
)

func newAddresser(string, []netip.Prefix) (addresser, error) {
	return nil, errors.New("peer: vip needs Linux (netlink)")
}

func watchLink(context.Context, string, func(bool)) error {
	return errors.New("peer: watching an interface needs Linux (netlink)")
}

func lockHeartbeatThread() { runtime.LockOSThread() }

func queued(any) bool { return false }

func startClock([]*path, time.Duration, <-chan struct{}) <-chan time.Time { return nil }

func waitReadable(any, time.Duration) bool { return true }
