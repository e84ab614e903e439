package realmail

import (
	"fmt"
	"mailproxy/internal/testkit"
	"os"
	"syscall"
	"time"
)

// procAttr kills a child mailproxy when the test binary dies (a panic or a
// -timeout), so that no orphan keeps serving.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// lockMachine takes the machine-wide lock of the harness: its ports are
// fixed, and `go test ./...` run twice at once (two engineers, or an
// editor and a terminal) would otherwise start two harnesses, or clean up
// the other's. It waits up to d for another run to finish. The kernel
// drops the lock when this process ends, however it ends.
func lockMachine(path string, d time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	try := func() error { return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) }
	err = try()
	if err == syscall.EWOULDBLOCK {
		fmt.Fprintf(os.Stderr, "realmail: waiting up to %v for another run of these tests to finish (%s)\n", d, path)
		// flock has no timeout: poll it.
		testkit.Eventually(d, 100*time.Millisecond, func() bool { err = try(); return err != syscall.EWOULDBLOCK })
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s (another realmail run holds it): %w", path, err)
	}
	return f, nil
}
