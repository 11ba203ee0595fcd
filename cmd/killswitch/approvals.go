package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/killswitch-dev/killswitch/httpapi"
)

const approvalsHelp = `Lists what waits on people (GET /api/approvals): held actions waiting for an approval
(approve ID or reject ID before the deadline, or nothing runs) and running veto windows
(the action runs at the deadline unless someone runs veto ID). Needs the viewer role.`

// runApprovals implements `killswitch approvals`.
func runApprovals(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
	var p httpapi.Pending
	if code, done := c.call(ctx, f, "approvals", "GET", "/api/approvals", nil, &p, stdout, stderr); done {
		return code
	}
	section := func(title, empty, deadline string, list []httpapi.PendingAction) {
		fmt.Fprintln(stdout, title)
		if len(list) == 0 {
			fmt.Fprintln(stdout, "  "+empty)
			return
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  ID\tINCIDENT\tTYPE\tTARGET\t%s\tLEFT\tWHY\n", deadline)
		for _, a := range list {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Incident, a.Type, a.Target,
				a.Deadline.UTC().Format(time.RFC3339), ago(time.Duration(a.RemainingSeconds*float64(time.Second))), oneLine(a.Reason, 80))
		}
		tw.Flush()
	}
	section("Veto windows (run at the deadline unless vetoed: killswitch veto ID):", "none", "RUNS AT", p.VetoWindows)
	fmt.Fprintln(stdout)
	section("Waiting for an approval (killswitch approve ID | reject ID):", "none", "EXPIRES", p.Approvals)
	return exitOK
}
