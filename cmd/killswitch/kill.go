package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/replay"
	"github.com/spf13/cobra"
)

const killHelp = `Cuts a whole vendor off in one plan: every credential of the inventory, plus what Vault
enumerates of its holdings (the secret-ids of its AppRole roles, the leases under its prefixes,
its KV secrets, its identity entity — disabled, which cuts every token of it, even those
Vault cannot list). The plan is shown first (GET /api/vendors/NAME/kill-plan); with --yes it
is ordered (POST /api/vendors/NAME/kill): applied and verified at once on your authority, or,
when kill.second_approver is set, held until another admin runs killswitch kills approve ID.
One incident, one exposure window. In shadow and dry-run the plan is recorded, not applied.
Ordering needs the admin role; --plan needs the approver role.`

const killsHelp = `Lists the kill orders (GET /api/kills), newest first: who ordered and approved each,
where it stands (pending, running, done, incomplete, rejected, restored), its incident and
exposure window. Needs the viewer role.`

const restoreHelp = `Restores an incident after a false positive (POST /api/incidents/ID/restore): reverses
what can be reversed (re-enables the identity entity, restores quarantined policies),
re-issues what cannot (a new AppRole secret-id per role, a new KV version), each handed over
response-wrapped — the wrapping tokens are printed once, here: give each to the vendor over a
separate channel; it unwraps once (vault unwrap TOKEN) before it expires — and says plainly
what stays dead (revoked tokens and leases: the vendor obtains new ones the usual way). Every
step is recorded in the ledger; the incident is marked a false positive with its
time-to-restore, and the same pattern on the same key waits for approval for a while
(kill.hold_after_restore). Needs the admin role.`

// newKillCmds are kill-vendor, kills (with approve, reject) and restore.
func newKillCmds(getenv func(string) string) []*cobra.Command {
	var reason string
	var planOnly, yes bool
	kill := apiCmd(getenv, "kill-vendor NAME --reason TEXT [--plan] [--yes] [flags]", "cut a whole vendor off: one plan of everything it holds",
		killHelp, wantArgs(1), func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			return runKill(ctx, f, c, pos[0], reason, planOnly, yes, stdout, stderr)
		})
	longer(kill)
	kill.Flags().StringVar(&reason, "reason", "", "why, for the ledger and the incident (required to order)")
	kill.Flags().BoolVar(&planOnly, "plan", false, "show the plan only; nothing is ordered")
	kill.Flags().BoolVar(&yes, "yes", false, "order the kill after showing the plan")

	kills := apiCmd(getenv, "kills [flags]", "list the kill orders", killsHelp, cobra.NoArgs, runKills)
	kills.AddCommand(apiCmd(getenv, "show ID [flags]", "one kill order: its plan, its actions, its restore",
		`Shows one kill order (GET /api/kills/ID): who ordered and approved it, the plan shown before it ran,
the state of every action, and its restore. Needs the viewer role.`,
		wantArgs(1), func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			var o pipeline.KillOrder
			if code, done := c.call(ctx, f, "kills show", "GET", "/api/kills/"+url.PathEscape(pos[0]), nil, &o, stdout, stderr); done {
				return code
			}
			printOrder(stdout, o)
			fmt.Fprintln(stdout)
			printPlan(stdout, o.Plan)
			if r := o.Restore; r != nil {
				fmt.Fprintf(stdout, "\nRestored by %s at %s (%s): complete %v, time to restore %s\n", r.By, r.RestoredAt.UTC().Format(time.RFC3339),
					r.Reason, r.Complete, replay.FormatSeconds(r.TimeToRestoreSeconds))
			}
			return exitOK
		}))
	kills.AddCommand(apiCmd(getenv, "approve ID [flags]", "approve a pending kill order: it runs now",
		`Approves a pending (or incomplete) kill order and runs it (POST /api/kills/ID/approve).
When kill.second_approver is set, the approver must not be who ordered it. Needs the admin role.`,
		wantArgs(1), func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			return postOrder(ctx, f, c, "/api/kills/"+url.PathEscape(pos[0])+"/approve", map[string]string{}, "kills approve", stdout, stderr)
		}))
	var rejectReason string
	reject := apiCmd(getenv, "reject ID [--reason TEXT] [flags]", "reject a pending kill order: nothing of it runs",
		`Rejects a pending kill order (POST /api/kills/ID/reject). Needs the admin role.`,
		wantArgs(1), func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			return postOrder(ctx, f, c, "/api/kills/"+url.PathEscape(pos[0])+"/reject", map[string]string{"reason": rejectReason}, "kills reject", stdout, stderr)
		})
	reject.Flags().StringVar(&rejectReason, "reason", "", "why, for the ledger")
	kills.AddCommand(reject)

	var restoreReason string
	restore := apiCmd(getenv, "restore INCIDENT --reason TEXT [flags]", "restore an incident after a false positive", restoreHelp, wantArgs(1),
		func(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
			return runRestore(ctx, f, c, pos[0], restoreReason, stdout, stderr)
		})
	longer(restore)
	restore.Flags().StringVar(&restoreReason, "reason", "", "why it was a false positive, for the ledger and the incident (required)")
	return []*cobra.Command{kill, kills, restore}
}

// longer gives a command that applies and verifies in Vault a minute by default.
func longer(c *cobra.Command) {
	f := c.Flags().Lookup("timeout")
	_ = f.Value.Set("1m")
	f.DefValue = "1m0s"
}

// runKill implements `killswitch kill-vendor`.
func runKill(ctx context.Context, f *apiFlags, c *apiClient, vendor, reason string, planOnly, yes bool, stdout, stderr io.Writer) int {
	var plan pipeline.KillPlan
	var raw []byte
	if err := c.do(ctx, "GET", "/api/vendors/"+url.PathEscape(vendor)+"/kill-plan", nil, &plan, &raw); err != nil {
		return fail(stderr, "kill-vendor", err)
	}
	if f.asJSON && planOnly {
		printJSON(stdout, raw)
		return exitOK
	}
	if !f.asJSON {
		printPlan(stdout, plan)
	}
	if planOnly {
		return exitOK
	}
	if strings.TrimSpace(reason) == "" || !yes {
		fmt.Fprintf(stderr, "kill-vendor: nothing ordered: to cut %s off as planned above, run it again with --reason TEXT --yes\n", vendor)
		return exitUsage
	}
	return postOrder(ctx, f, c, "/api/vendors/"+url.PathEscape(vendor)+"/kill", map[string]string{"reason": reason}, "kill-vendor", stdout, stderr)
}

// printPlan prints a kill plan, one line per credential.
func printPlan(w io.Writer, p pipeline.KillPlan) {
	fmt.Fprintf(w, "Plan to cut %s off (%s mode; planned in %.0f ms): %d credentials, %d of them found in Vault beyond the inventory\n",
		p.Vendor, p.Mode, p.PlanSeconds*1000, len(p.Steps), p.Enumerated)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  CREDENTIAL\tACTION\tWHAT DIES")
	for _, s := range p.Steps {
		what := s.Target
		switch {
		case s.Error != "":
			what += " — cannot plan: " + oneLine(s.Error, 80)
		case s.Plan != nil && s.Plan.AlreadyGone:
			what += " — already gone"
		case s.Plan != nil:
			what = oneLine(s.Plan.Summary, 100)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Credential, s.Type, what)
	}
	tw.Flush()
	if len(p.Protected) > 0 {
		fmt.Fprintf(w, "Left alone (protected): %s\n", strings.Join(p.Protected, ", "))
	}
	for _, pr := range p.Problems {
		fmt.Fprintf(w, "Problem: %s\n", oneLine(pr, 160))
	}
}

// postOrder posts to a kill route and prints the order it answers.
func postOrder(ctx context.Context, f *apiFlags, c *apiClient, path string, body any, name string, stdout, stderr io.Writer) int {
	var o httpapi.KillResponse
	var raw []byte
	if err := c.do(ctx, "POST", path, body, &o, &raw); err != nil {
		return fail(stderr, name, err)
	}
	if f.asJSON {
		printJSON(stdout, raw)
	} else {
		printOrder(stdout, o.KillOrder)
	}
	if o.Error != "" {
		fmt.Fprintf(stderr, "%s: incomplete: %s\n", name, o.Error)
		return exitFailed
	}
	return exitOK
}

// printOrder prints where a kill order stands.
func printOrder(w io.Writer, o pipeline.KillOrder) {
	fmt.Fprintf(w, "kill order %s: %s %s (ordered by %s", o.ID, o.Vendor, o.State, o.RequestedBy)
	if o.ApprovedBy != "" {
		fmt.Fprintf(w, ", approved by %s", o.ApprovedBy)
	}
	fmt.Fprintf(w, "), incident %s\n", o.Incident)
	switch o.State {
	case pipeline.KillPending:
		fmt.Fprintf(w, "waiting for a second approver: killswitch kills approve %s (another admin)\n", o.ID)
	case pipeline.KillDone, pipeline.KillIncomplete, pipeline.KillPlanned:
		verified := 0
		for _, a := range o.Actions {
			if a.Status == "verified" || a.Status == "planned" {
				verified++
			}
		}
		fmt.Fprintf(w, "%d of %d actions verified; plan %.0f ms, apply and verify %.0f ms", verified, len(o.Actions),
			o.Plan.PlanSeconds*1000, o.ApplySeconds*1000)
		if o.ExposureWindowSeconds != nil {
			fmt.Fprintf(w, "; exposure window %s", replay.FormatSeconds(*o.ExposureWindowSeconds))
		}
		fmt.Fprintln(w)
		for _, a := range o.Actions {
			if a.Status != "verified" && a.Status != "planned" {
				fmt.Fprintf(w, "  %s %s: %s %s\n", a.Credential, a.Type, a.Status, oneLine(a.Detail, 100))
			}
		}
	}
}

// runKills implements `killswitch kills`.
func runKills(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
	var out struct {
		Kills []pipeline.KillOrder `json:"kills"`
	}
	if code, done := c.call(ctx, f, "kills", "GET", "/api/kills", nil, &out, stdout, stderr); done {
		return code
	}
	if len(out.Kills) == 0 {
		fmt.Fprintln(stdout, "no kill orders")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVENDOR\tSTATE\tORDERED BY\tAPPROVED BY\tINCIDENT\tEXPOSURE\tREASON")
	for _, o := range out.Kills {
		exp := "-"
		if o.ExposureWindowSeconds != nil {
			exp = replay.FormatSeconds(*o.ExposureWindowSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Vendor, o.State, o.RequestedBy, o.ApprovedBy, o.Incident, exp, oneLine(o.Reason, 60))
	}
	tw.Flush()
	return exitOK
}

// runRestore implements `killswitch restore`.
func runRestore(ctx context.Context, f *apiFlags, c *apiClient, incident, reason string, stdout, stderr io.Writer) int {
	if strings.TrimSpace(reason) == "" {
		fmt.Fprintln(stderr, "restore: --reason is required (why it was a false positive)")
		return exitUsage
	}
	var out struct {
		Restoration pipeline.Restoration `json:"restoration"`
		Error       string               `json:"error"`
	}
	var raw []byte
	if err := c.do(ctx, "POST", "/api/incidents/"+url.PathEscape(incident)+"/restore", map[string]string{"reason": reason}, &out, &raw); err != nil {
		return fail(stderr, "restore", err)
	}
	if f.asJSON {
		printJSON(stdout, raw)
	} else {
		n := out.Restoration.Note
		fmt.Fprintf(stdout, "incident %s (%s) restored by %s in %.0f ms; the vendor was cut off for %s\n", incident, out.Restoration.Vendor,
			n.By, n.TookSeconds*1000, replay.FormatSeconds(n.TimeToRestoreSeconds))
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CREDENTIAL\tWAS\tNOW\tEVIDENCE")
		for _, s := range n.Steps {
			ev := s.Evidence
			if s.Error != "" {
				ev = "error: " + s.Error
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", s.Credential, s.Type, s.Outcome, oneLine(ev, 100))
		}
		tw.Flush()
		if len(out.Restoration.Wrapped) > 0 {
			fmt.Fprintln(stdout, "Hand each wrapping token to the vendor over a separate channel; it unwraps once (vault unwrap TOKEN) before it expires.")
			fmt.Fprintln(stdout, "They are shown only now:")
			for cred, w := range out.Restoration.Wrapped {
				fmt.Fprintf(stdout, "  %s\t%s\texpires %s\n", cred, w.Token, w.ExpiresAt.UTC().Format(time.RFC3339))
			}
		}
	}
	if out.Error != "" || !out.Restoration.Note.Complete {
		fmt.Fprintf(stderr, "restore: incomplete: %s (run it again: steps that succeeded are not repeated)\n", out.Error)
		return exitFailed
	}
	return exitOK
}
