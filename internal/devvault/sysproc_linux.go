package devvault

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// sysProcAttr makes the kernel kill the server when the process that started it dies,
// so a crashed test run leaves no Vault behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// waitState waits until /proc reports the process in one of states (e.g. "T" for
// stopped), so that a SIGSTOP or SIGCONT has taken effect before Pause or Resume returns.
func waitState(pid int, states string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		// The state follows the parenthesised command name: "pid (comm) S ...".
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && strings.IndexByte(states, b[i+2]) >= 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d not in state %q after %v", pid, states, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}
