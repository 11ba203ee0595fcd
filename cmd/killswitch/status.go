package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/killswitch-dev/killswitch/httpapi"
)

const statusHelp = `Prints the service's state (GET /api/status): mode (and why dry-run), pause, breaker,
ledger integrity (and appends failing), a detection storm's hold, the Vault token's scope, the cluster's
members; and how many actions wait on people (GET /api/approvals). Needs the viewer role.`

// runStatus implements `killswitch status`.
func runStatus(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
	var st httpapi.Status
	if code, done := c.call(ctx, f, "status", "GET", "/api/status", nil, &st, stdout, stderr); done {
		return code
	}
	var p httpapi.Pending
	pendingErr := c.do(ctx, "GET", "/api/approvals", nil, &p, nil)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	mode := st.Mode
	if st.DryRunReason != "" {
		mode += " (" + st.DryRunReason + ")"
	}
	row("mode", mode)
	if st.Paused {
		row("automation", "PAUSED by "+st.PausedBy+" at "+st.PausedAt.UTC().Format(time.RFC3339))
	} else {
		row("automation", "running")
	}
	if st.BreakerOpen {
		row("breaker", "OPEN: approval-only mode (killswitch approvals; POST /api/breaker/reset)")
	} else {
		row("breaker", "closed")
	}
	if l := st.Ledger; l != nil {
		row("ledger", fmt.Sprintf("%s (head %d)", l.Integrity, l.HeadSeq))
		if l.Appends == "failing" {
			row("ledger appends", fmt.Sprintf("FAILING since %s: %d entries not stored; last error: %s",
				l.FailingSince.UTC().Format(time.RFC3339), l.FailedAppends, l.LastFailure))
		}
	}
	if st.Storm != nil {
		row("storm", fmt.Sprintf("holding %s until %s (%d held)", strings.Join(st.Storm.Vendors, ", "),
			st.Storm.Until.UTC().Format(time.RFC3339), len(st.Storm.Held)))
	}
	if st.VaultTokenScope != "" {
		row("vault token", st.VaultTokenScope)
	}
	if st.Cluster != nil {
		alive := 0
		for _, m := range st.Cluster.Members {
			if m.Alive {
				alive++
			}
		}
		row("cluster", fmt.Sprintf("%s answering; %d of %d members alive", st.Cluster.Instance, alive, len(st.Cluster.Members)))
	}
	if pendingErr == nil {
		row("waiting on people", fmt.Sprintf("%d approvals, %d veto windows", len(p.Approvals), len(p.VetoWindows)))
	} else {
		row("waiting on people", "unknown: "+pendingErr.Error())
	}
	tw.Flush()
	return exitOK
}
