package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	pipejs "github.com/killswitch-dev/killswitch/pipeline/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/replay"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

const replayUsage = `usage: killswitch replay --telemetry FILE [--telemetry FILE…] | --stream NAME [--since T] [--until T]
                         [--config FILE] [--playbooks DIR] [--baseline-playbooks DIR] [--vault ADDR]
                         [--json OUT.json] [--report OUT.html] [--speed N] [--format json|vpc|ocsf|zeek]

Replays recorded telemetry through the same detectors, incidents, playbooks and guard
rails as the service, on a virtual clock that follows event time. Without --vault,
actions are planned (with their exact targets), not applied, and the credentials seen in
the telemetry that the inventory does not list are revocable in the plan, marked
unmapped (add them to the inventory to revoke them for real; --unmapped=false to plan
only what the inventory lists).
`

// replayEvalTimeout is the playbooks' evaluation deadline in a replay.
const replayEvalTimeout = 5 * time.Second

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// runReplay implements `killswitch replay`.
func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, replayUsage, "\nflags:\n"); fs.PrintDefaults() }
	var (
		files, pbDirs, basePB stringList
		nopts                 natsconn.Options
	)
	fs.Var(&files, "telemetry", "NDJSON or NDJSON.gz telemetry file (repeatable; - for stdin)")
	fs.Var(&pbDirs, "playbooks", "playbook directory (repeatable; default: the shipped library)")
	fs.Var(&basePB, "baseline-playbooks", "compare against this playbook directory (repeatable): lists every decision that flips")
	configPath := fs.String("config", "", "configuration file (vendor inventory, detector and guard settings)")
	shipped := fs.Bool("shipped", false, "also load the shipped library with --playbooks")
	vaultAddr := fs.String("vault", "", "apply actions against this Vault (token from VAULT_TOKEN); default: plan only")
	jsonOut := fs.String("json", "", "write the JSON report here (- for stdout)")
	htmlOut := fs.String("report", "", "write the HTML report here")
	speed := fs.Float64("speed", 0, "replay at N times real time (0: as fast as possible)")
	format := fs.String("format", "json", "telemetry format: json, vpc, ocsf, zeek")
	stream := fs.String("stream", "", "replay this JetStream stream instead of files")
	since := fs.String("since", "", "with --stream: first instant (RFC 3339, stream time)")
	until := fs.String("until", "", "with --stream: last instant (RFC 3339, stream time)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	unmapped := fs.Bool("unmapped", true, "without --vault: plan revocations of the credentials seen in the telemetry but not in the inventory, marked unmapped")
	nopts.RegisterFlags(fs, "nats://127.0.0.1:4222")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "killswitch replay: "+format+"\n", a...)
		return 1
	}
	if (len(files) == 0) == (*stream == "") {
		fmt.Fprint(stderr, "killswitch replay: give --telemetry FILE or --stream NAME\n\n")
		fs.Usage()
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
