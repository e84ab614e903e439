package proxy

import (
	"net"
	"syscall"
)

// waiter waits, holding nothing, until a TCP source has something to
// read (bytes, the end of the stream or an error) or its read deadline
// passes. It reads nothing.
type waiter struct {
	rc    syscall.RawConn
	ready func(fd uintptr) bool // made once: a closure per wait would be garbage per chunk
}

// newWaiter returns a waiter when both ends are TCP, so that the kernel
// splices between them, and nil otherwise.
func newWaiter(dst, src net.Conn) *waiter {
	_, ok := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if !ok || !ok2 {
		return nil
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return nil
	}
	return &waiter{rc: rc, ready: readable}
}

func (w *waiter) wait() error { return w.rc.Read(w.ready) }

// readable peeks at one byte: only "would block" means there is nothing.
func readable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
