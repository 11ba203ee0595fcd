package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/spf13/cobra"
)

const incidentsHelp = `list prints the incidents, newest first (GET /api/incidents); show prints one incident:
its milestones, exposure window, detections, decisions and actions (GET /api/incidents/ID).
Needs the viewer role.`

// incidentsFilter are the flags of `killswitch incidents [list]`.
type incidentsFilter struct {
	state, vendor string
	limit         int
}

// newIncidentsCmd is `killswitch incidents [list|show ID]`: incidents alone lists.
func newIncidentsCmd(getenv func(string) string) *cobra.Command {
	listCmd := func(use string) *cobra.Command {
		var q incidentsFilter
		c := apiCmd(getenv, use, "list incidents, or show one", incidentsHelp, cobra.NoArgs,
			func(ctx context.Context, f *apiFlags, c *apiClient, _ []string, stdout, stderr io.Writer) int {
				return listIncidents(ctx, f, c, &q, stdout, stderr)
			})
		c.Flags().StringVar(&q.state, "state", "", "only incidents in this state: open, contained or closed")
		c.Flags().StringVar(&q.vendor, "vendor", "", "only this vendor's incidents")
		c.Flags().IntVar(&q.limit, "limit", 100, "at most this many (1-1000)")
		completeValues(c, "state", "open", "contained", "closed")
		return c
	}
	c := listCmd("incidents [list] [--state open|contained|closed] [--vendor V] [--limit N] [flags]")
	list := listCmd("list [--state open|contained|closed] [--vendor V] [--limit N] [flags]")
	list.Short = "list incidents, newest first"
	show := apiCmd(getenv, "show ID [flags]", "show one incident: milestones, exposure window, detections, decisions, actions",
		incidentsHelp, wantArgs(1), showIncidentCmd)
	c.AddCommand(list, show)
	return c
}

// showIncidentCmd implements `killswitch incidents show ID`.
func showIncidentCmd(ctx context.Context, f *apiFlags, c *apiClient, pos []string, stdout, stderr io.Writer) int {
	var in incidents.Incident
	if code, done := c.call(ctx, f, "incidents show", "GET", "/api/incidents/"+url.PathEscape(pos[0]), nil, &in, stdout, stderr); done {
		return code
	}
	showIncident(stdout, &in)
	return exitOK
}

// listIncidents implements `killswitch incidents [list]`.
func listIncidents(ctx context.Context, f *apiFlags, c *apiClient, filter *incidentsFilter, stdout, stderr io.Writer) int {
	state, vendor, limit := filter.state, filter.vendor, filter.limit
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if state != "" {
		q.Set("state", state)
	}
	if vendor != "" {
		q.Set("vendor", vendor)
	}
	var out struct {
		Incidents []incidents.Incident `json:"incidents"`
	}
	if code, done := c.call(ctx, f, "incidents", "GET", "/api/incidents?"+q.Encode(), nil, &out, stdout, stderr); done {
		return code
	}
	if len(out.Incidents) == 0 {
		fmt.Fprintln(stdout, "no incidents")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVENDOR\tCREDENTIAL\tSTATE\tSEVERITY\tDETECTED\tEXPOSURE\tACTIONS")
	for _, in := range out.Incidents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Vendor, dash(in.Credential), in.State, in.Severity,
			in.DetectedAt.UTC().Format(time.RFC3339), exposure(&in), actionSummary(in.Actions))
	}
	tw.Flush()
	return exitOK
}

// showIncident prints one incident for people.
func showIncident(w io.Writer, in *incidents.Incident) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	at := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	row("incident", in.ID)
	row("vendor", in.Vendor+" "+dash(in.Credential))
	row("state", string(in.State)+" ("+string(in.Severity)+")")
	row("first anomalous", in.FirstAnomalousAt.UTC().Format(time.RFC3339Nano))
	row("detected", in.DetectedAt.UTC().Format(time.RFC3339Nano))
	row("decided", at(in.DecidedAt))
	if in.AnnouncedAt != nil {
		row("announced", at(in.AnnouncedAt)+" (veto window ends "+at(in.VetoWindowEndsAt)+")")
	}
	row("applied", at(in.AppliedAt))
	row("contained", at(in.ContainedAt))
	row("exposure window", exposure(in))
	row("detections", fmt.Sprintf("%d (%s)", in.DetectionCount, joinKinds(in)))
	tw.Flush()
	if len(in.Actions) > 0 {
		fmt.Fprintln(w, "\nactions:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ID\tTYPE\tTARGET\tSTATUS\tAT\tDETAIL")
		for _, a := range in.Actions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Type, a.Target, a.Status, a.At.UTC().Format(time.RFC3339), oneLine(a.Detail, 100))
		}
		tw.Flush()
	}
	if len(in.Decisions) > 0 {
		fmt.Fprintln(w, "\ndecisions:")
		for _, d := range in.Decisions {
			fmt.Fprintf(w, "  %s  %s  %s\n", d.At.UTC().Format(time.RFC3339), d.ID, oneLine(d.Reason, 120))
		}
	}
}

func exposure(in *incidents.Incident) string {
	if in.ExposureWindowSeconds == nil {
		return "-"
	}
	return ago(time.Duration(*in.ExposureWindowSeconds * float64(time.Second)))
}

func actionSummary(as []incidents.ActionRef) string {
	if len(as) == 0 {
		return "-"
	}
	var parts []string
	for _, a := range as {
		if a.Type.Destructive() {
			parts = append(parts, string(a.Status))
		}
	}
	if len(parts) == 0 {
		return fmt.Sprintf("%d notify", len(as))
	}
	return strings.Join(parts, ",")
}

func joinKinds(in *incidents.Incident) string {
	var ks []string
	for _, k := range in.Detectors {
		ks = append(ks, string(k))
	}
	return strings.Join(ks, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine squeezes s onto one line of at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}
