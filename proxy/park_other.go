//go:build !linux

package proxy

import (
	"errors"
	"syscall"
	"time"
)

// pollerSys is empty where parking is not built: newPoller fails, and
// relays keep their goroutines for their whole life.
type pollerSys struct{}

func newPoller(time.Duration) (*poller, error) {
	return nil, errors.New("parking idle sessions needs Linux")
}

func (p *poller) watch(syscall.RawConn, uint64) error { return errors.ErrUnsupported }

func (p *poller) unwatch(syscall.RawConn) {}

func (*pollerSys) close() {}
