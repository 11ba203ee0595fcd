package main

import (
	"context"
	"fmt"
	"io"

	"github.com/killswitch-dev/killswitch/httpapi"
)

const pauseUsage = `usage: killswitch pause [--reason TEXT] [flags]
       killswitch resume [flags]

pause stops automation fleet-wide (POST /api/pause): from the next decision on, every
destructive action is held for an approval, and one about to run is held before Vault
is called. resume restarts it (POST /api/resume) and lifts a detection storm's hold.
Needs the admin role; the ledger records your name.`

// runPause implements `killswitch pause`.
func runPause(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var reason string
	f, _, c, code, ok := apiCommand("pause", pauseUsage, args, 0, stderr, func(fs *flagSet) {
		fs.StringVar(&reason, "reason", "", "why, for the ledger and the status")
	})
	if !ok {
		return code
	}
	return control(ctx, c, f, "pause", map[string]string{"reason": reason}, stdout, stderr)
}

// runResume implements `killswitch resume`.
func runResume(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, _, c, code, ok := apiCommand("resume", pauseUsage, args, 0, stderr, nil)
	if !ok {
		return code
	}
	return control(ctx, c, f, "resume", map[string]string{}, stdout, stderr)
}

// control posts a control switch and prints the status the API answers.
func control(ctx context.Context, c *apiClient, f apiFlags, verb string, body any, stdout, stderr io.Writer) int {
	var st httpapi.Status
	var raw []byte
	if err := c.do(ctx, "POST", "/api/"+verb, body, &st, &raw); err != nil {
		return fail(stderr, verb, err)
	}
	if f.asJSON {
		printJSON(stdout, raw)
		return exitOK
	}
	if st.Paused {
		fmt.Fprintf(stdout, "paused by %s: every destructive action is held\n", st.PausedBy)
	} else {
		fmt.Fprintln(stdout, "automation running")
	}
	return exitOK
}
