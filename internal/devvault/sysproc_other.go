//go:build !linux

package devvault

import "syscall"

// sysProcAttr returns no special attributes where the parent-death signal does not exist.
func sysProcAttr() *syscall.SysProcAttr { return nil }
