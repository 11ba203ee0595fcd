package main

import (
	"context"
	"fmt"
	"io"

	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/spf13/cobra"
)

const pauseHelp = `pause stops automation fleet-wide (POST /api/pause): from the next decision on, every
destructive action is held for an approval, and one about to run is held before Vault
is called. resume restarts it (POST /api/resume) and lifts a detection storm's hold.
Needs the admin role; the ledger records your name.`

// newPauseCmd is `killswitch pause`.
func newPauseCmd(getenv func(string) string) *cobra.Command {
	var reason string
	c := apiCmd(getenv, "pause [--reason TEXT] [flags]", "pause automation fleet-wide: destructive actions are held", pauseHelp, cobra.NoArgs,
		func(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
			return control(ctx, c, f, "pause", map[string]string{"reason": reason}, stdout, stderr)
		})
	c.Flags().StringVar(&reason, "reason", "", "why, for the ledger and the status")
	return c
}

// runResume implements `killswitch resume`.
func runResume(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
	return control(ctx, c, f, "resume", map[string]string{}, stdout, stderr)
}

// control posts a control switch and prints the status the API answers.
func control(ctx context.Context, c *apiClient, f *apiFlags, verb string, body any, stdout, stderr io.Writer) int {
	var st httpapi.Status
	if code, done := c.call(ctx, f, verb, "POST", "/api/"+verb, body, &st, stdout, stderr); done {
		return code
	}
	if st.Paused {
		fmt.Fprintf(stdout, "paused by %s: every destructive action is held\n", st.PausedBy)
	} else {
		fmt.Fprintln(stdout, "automation running")
	}
	return exitOK
}
