//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// heldSocket is Linux only: elsewhere the listeners open on activation.
type heldSocket struct{}

func holdTCP(string) (*heldSocket, error) {
	return nil, errors.New("holding a bound socket needs Linux")
}

func (h *heldSocket) listen() (net.Listener, error) { return nil, errors.New("not held") }
func (h *heldSocket) close()                        {}
