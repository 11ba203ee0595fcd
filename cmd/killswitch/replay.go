package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	pipejs "github.com/killswitch-dev/killswitch/pipeline/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/replay"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// replayEvalTimeout is the playbooks' evaluation deadline in a replay.
const replayEvalTimeout = 5 * time.Second

// replayOptions are the flags of `killswitch replay`: a contract (DESIGN.md), kept
// exactly as they were.
type replayOptions struct {
	files, pbDirs, basePB                                   []string
	configPath, vaultAddr, jsonOut, htmlOut, format, stream string
	since, until                                            string
	shipped, quiet, unmapped                                bool
	speed                                                   float64
	nats                                                    natsconn.Options
}

func newReplayCmd(getenv func(string) string) *cobra.Command {
	var o replayOptions
	c := &cobra.Command{
		Use:   "replay --telemetry FILE [--telemetry FILE…] | --stream NAME [--since T] [--until T] [flags]",
		Short: "replay recorded telemetry through the pipeline and report",
		Long: longHelp(`Replays recorded telemetry through the same detectors, incidents, playbooks and guard
rails as the service, on a virtual clock that follows event time. Without --vault,
actions are planned (with their exact targets), not applied, and the credentials seen in
the telemetry that the inventory does not list are revocable in the plan, marked
unmapped (add them to the inventory to revoke them for real; --unmapped=false to plan
only what the inventory lists).`,
			`The JSON report (--json) is a stable contract for other tools (DESIGN.md).`,
			`Exit status: 0 replayed (and the reports written); 1 the replay failed (a missing file,
playbooks that do not compile…); 2 usage error.`),
		Example: `  killswitch replay --telemetry week.ndjson.gz --config killswitch.yaml --json out.json --report out.html
  killswitch replay --stream EGRESS --since 2026-02-05T10:00:00Z --until 2026-02-05T12:00:00Z --json -`,
		Args: cobra.NoArgs,
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			return runReplay(ctx, c, &o, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.SortFlags = false
	fs.StringArrayVar(&o.files, "telemetry", nil, "NDJSON or NDJSON.gz telemetry file (repeatable; - for stdin)")
	fs.StringVar(&o.stream, "stream", "", "replay this JetStream stream instead of files")
	fs.StringVar(&o.since, "since", "", "with --stream: first instant (RFC 3339, stream time)")
	fs.StringVar(&o.until, "until", "", "with --stream: last instant (RFC 3339, stream time)")
	fs.StringVar(&o.configPath, "config", "", "configuration file (vendor inventory, detector and guard settings)")
	fs.StringArrayVar(&o.pbDirs, "playbooks", nil, "playbook directory (repeatable; default: the shipped library)")
	fs.BoolVar(&o.shipped, "shipped", false, "also load the shipped library with --playbooks")
	fs.StringArrayVar(&o.basePB, "baseline-playbooks", nil, "compare against this playbook directory (repeatable): lists every decision that flips")
	fs.StringVar(&o.vaultAddr, "vault", "", "apply actions against this Vault (token from VAULT_TOKEN); default: plan only")
	fs.StringVar(&o.jsonOut, "json", "", "write the JSON report here (- for stdout)")
	fs.StringVar(&o.htmlOut, "report", "", "write the HTML report here")
	fs.Float64Var(&o.speed, "speed", 0, "replay at N times real time (0: as fast as possible)")
	fs.StringVar(&o.format, "format", "json", "telemetry format: json, vpc, ocsf, zeek")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	fs.BoolVar(&o.unmapped, "unmapped", true, "without --vault: plan revocations of the credentials seen in the telemetry but not in the inventory, marked unmapped")
	registerNATSFlags(fs, &o.nats, getenv, defaultNATSURL, defaultNATSURL+" (used with --stream)")
	_ = c.MarkFlagDirname("playbooks")
	_ = c.MarkFlagDirname("baseline-playbooks")
	completeValues(c, "format", "json", "vpc", "ocsf", "zeek")
	return c
}

// runReplay implements `killswitch replay`.
func runReplay(ctx context.Context, c *cobra.Command, ro *replayOptions, stdout, stderr io.Writer) int {
	var (
		files, pbDirs, basePB = ro.files, ro.pbDirs, ro.basePB
		nopts                 = ro.nats
		configPath, shipped   = &ro.configPath, &ro.shipped
		vaultAddr, jsonOut    = &ro.vaultAddr, &ro.jsonOut
		htmlOut, speed        = &ro.htmlOut, &ro.speed
		format, stream        = &ro.format, &ro.stream
		since, until          = &ro.since, &ro.until
		quiet, unmapped       = &ro.quiet, &ro.unmapped
	)
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "killswitch replay: "+format+"\n", a...)
		return 1
	}
	if (len(files) == 0) == (*stream == "") {
		fmt.Fprint(stderr, "killswitch replay: give --telemetry FILE or --stream NAME\n\n")
		c.SetOut(stderr)
		_ = c.Usage()
		return 2
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return fail("%v", err)
	}
	newDecoder, err := decoderFor(*format, cfg)
	if err != nil {
		return fail("%v", err)
	}
	pbSources, err := playbookSources(pbDirs, *shipped)
	if err != nil {
		return fail("--playbooks: %v", err)
	}
	// A replay's decisions must not depend on how busy the machine is: the evaluation
	// deadline is generous (the service keeps its 50 ms one, to fail safe fast).
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: pbSources, PollInterval: -1, Timeout: replayEvalTimeout})
	if err != nil {
		printCompileError(stderr, "replay", err)
		return 1
	}
	o := replay.Options{Detectors: cfg.Detectors, Vendors: cfg.Vendors, Incidents: cfg.Incidents, Actions: cfg.Actions, Playbooks: pb}
	if len(basePB) > 0 {
		baseSrc, err := playbookSources(basePB, false)
		if err != nil {
			return fail("--baseline-playbooks: %v", err)
		}
		if o.Baseline, err = playbooks.New(ctx, playbooks.Options{Sources: baseSrc, PollInterval: -1, Timeout: replayEvalTimeout}); err != nil {
			printCompileError(stderr, "replay (baseline)", err)
			return 1
		}
	}
	if *vaultAddr != "" {
		factory, err := vaultActor(ctx, *vaultAddr, cfg)
		if err != nil {
			return fail("--vault: %v", err)
		}
		o.NewActor = factory
	} else {
		o.NewActor, o.PlannedContains = replay.PlanActions(cfg.Actions, cfg.Vendors), true
		o.Unmapped = *unmapped // never with --vault: an unmapped credential is only ever planned
	}
	o.Speed = *speed
	o.Counters = telemetry.NewCounters()
	if !*quiet && isTerminal(os.Stderr) {
		o.Progress = stderr
	}

	door, err := telemetry.NewAdmission(cfg.Telemetry)
	if err != nil {
		return fail("%v", err)
	}
	vendorToken := 0
	if newDecoder != nil {
		vendorToken = -1 // vendors attributed by address
	}
	var src telemetry.Source
	if *stream != "" {
		nopts.Name = "killswitch-replay"
		defaultCreds(&nopts, "", embeddednats.RoleOperator) // reading the stream: the data dir's read-only identity
		nc, err := nopts.Connect(zap.NewNop())
		if err != nil {
			return fail("%v", err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fail("%v", err)
		}
		st, err := js.Stream(ctx, *stream)
		if err != nil {
			return fail("stream %s: %v", *stream, err)
		}
		rng := &telnats.StreamRange{Stream: st, NewDecoder: newDecoder, Counters: o.Counters, Admission: door, VendorToken: vendorToken}
		for flagName, p := range map[string]*time.Time{*since: &rng.Since, *until: &rng.Until} {
			if flagName == "" {
				continue
			}
			if *p, err = time.Parse(time.RFC3339, flagName); err != nil {
				return fail("--since/--until: %v", err)
			}
		}
		if *speed > 0 {
			o.Events = pipejs.NATSEvents{NC: nc}
		}
		src = rng
	} else {
		var bad int64
		fopts := telemetry.FileOptions{NewDecoder: newDecoder, Counters: o.Counters, Admission: door, OnBadLine: func(p telemetry.Position, err error) {
			bad++
			if bad <= 20 {
				fmt.Fprintf(stderr, "killswitch replay: %s:%d: %v (skipped)\n", p.Name, p.Line, err)
			}
		}}
		src = telemetry.NewFileSource(fopts, files...)
	}
	rep, err := replay.Run(ctx, src, o)
	if err != nil {
		return fail("%v", err)
	}
	if err := writeReport(*jsonOut, stdout, rep.WriteJSON); err != nil {
		return fail("%v", err)
	}
	if err := writeReport(*htmlOut, stdout, rep.WriteHTML); err != nil {
		return fail("%v", err)
	}
	if *jsonOut != "-" {
		s := rep.Summary
		fmt.Fprintf(stdout, "%d events, %d incidents, %d contained", rep.Events, s.Incidents, s.Contained)
		if s.MedianExposureSeconds != nil {
			fmt.Fprintf(stdout, ", exposure window median %.3fs, worst %.3fs", *s.MedianExposureSeconds, *s.WorstExposureSeconds)
		}
		fmt.Fprintln(stdout)
		if s.UnmappedCredentials > 0 {
			fmt.Fprintf(stdout, "%d unmapped credential(s) targeted in the plan only (%d incident(s) contained through them): add them to the inventory to revoke them for real\n",
				s.UnmappedCredentials, s.ContainedUnmapped)
		}
		if rep.Flips != nil {
			fmt.Fprintf(stdout, "%d decision(s) flip between the baseline and the new playbooks\n", len(rep.Flips))
			for _, f := range rep.Flips {
				fmt.Fprintf(stdout, "  %s %s/%s %s: %s → %s\n", f.At, f.Vendor, f.Credential, f.Detector, f.Baseline, f.Candidate)
			}
		}
	}
	return 0
}

func writeReport(path string, stdout io.Writer, write func(io.Writer) error) error {
	switch path {
	case "":
		return nil
	case "-":
		return write(stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
