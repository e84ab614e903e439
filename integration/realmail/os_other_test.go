//go:build !linux

package realmail

import (
	"os"
	"syscall"
	"time"
)

func procAttr() *syscall.SysProcAttr { return nil }

func lockMachine(path string, d time.Duration) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
}
