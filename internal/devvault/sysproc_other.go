//go:build !linux

package devvault

import (
	"syscall"
	"time"
)

// sysProcAttr returns no special attributes where the parent-death signal does not exist.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// waitState cannot observe process states here; it returns at once.
func waitState(int, string, time.Duration) error { return nil }
