package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/scenario"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// generateOptions are the flags of `killswitch generate`.
type generateOptions struct {
	cfg                                scenario.Config
	nats                               natsconn.Options
	out, labels, cfgOut, start, stream string
	speed                              float64
}

func newGenerateCmd(getenv func(string) string) *cobra.Command {
	var o generateOptions
	c := &cobra.Command{
		Use:   "generate --out FILE.ndjson[.gz] | --nats URL [flags]",
		Short: "generate labelled telemetry to a file or NATS",
		Long: longHelp(`Generates days of egress telemetry for many vendors with daily and weekly seasonality,
nightly batches and noise, with labelled attacks injected; deterministic by --seed.`,
			`Writes NDJSON to --out, or publishes to NATS: to --nats, or to $KILLSWITCH_NATS_URL when
--out is not given.`,
			`Exit status: 0 generated; 1 failed; 2 usage error.`),
		Args: cobra.NoArgs,
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			if o.out != "" && c.Flags().Changed("nats") {
				fmt.Fprintln(c.ErrOrStderr(), "killswitch generate: give exactly one of --out and --nats")
				return 2
			}
			if o.out != "" {
				o.nats.URL = "" // an environment's default NATS is not used with --out
			}
			return runGenerate(ctx, &o, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	cfg := &o.cfg
	fs.StringVar(&o.out, "out", "", "write NDJSON to this file (gzip when it ends in .gz; - for stdout)")
	fs.StringVar(&o.labels, "labels", "", "write the labelled attacks as JSON to this file")
	fs.StringVar(&o.cfgOut, "config-out", "", "write a configuration with the scenario's vendor inventory to this file")
	fs.StringVar(&o.start, "start", "", `first instant, RFC 3339, or "now" to end the scenario now (default 2026-02-02T00:00:00Z)`)
	fs.Float64Var(&o.speed, "speed", 0, "with --nats: publish at N times real time (0: as fast as possible)")
	fs.StringVar(&o.stream, "stream", "EGRESS", "with --nats: the telemetry stream, created if missing (the stream replay --stream reads)")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "random seed")
	fs.IntVar(&cfg.Days, "days", 14, "days of telemetry")
	fs.IntVar(&cfg.Vendors, "vendors", 8, "number of vendors")
	fs.IntVar(&cfg.CredentialsPerVendor, "credentials", 2, "active credentials per vendor")
	fs.Float64Var(&cfg.EventsPerMinute, "rate", 6, "events per minute per credential at the daily peak")
	fs.IntVar(&cfg.Attacks, "attacks", 1, "attacks of each kind to inject (-1: none)")
	fs.Func("holidays", "comma-separated days (0 = the first day) on which the whole fleet dips to --holiday-factor of its level", func(v string) error {
		for f := range strings.SplitSeq(v, ",") {
			d, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || d < 0 {
				return fmt.Errorf("day %q: want a day number from 0", f)
			}
			cfg.Holidays = append(cfg.Holidays, d)
		}
		return nil
	})
	fs.Float64Var(&cfg.HolidayFactor, "holiday-factor", 0.3, "traffic level on a holiday")
	fs.Func("fleet-shift", "DAY:HOUR:FACTOR: from that hour on, every vendor's normal traffic is multiplied by FACTOR (a network change); repeat or comma-separate for more", func(v string) error {
		for f := range strings.SplitSeq(v, ",") {
			s, err := scenario.ParseFleetShift(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			cfg.FleetShifts = append(cfg.FleetShifts, s)
		}
		return nil
	})
	fs.BoolVar(&cfg.ForgedTimes, "forged-times", false, "also inject, a day before each attack, 3 events with forged times (2099, 1971) meant to blind the detectors")
	registerNATSFlags(fs, &o.nats, getenv, "", "none: give --out or --nats")
	return c
}

// runGenerate implements `killswitch generate`: realistic labelled telemetry, to a file
// or published to NATS.
func runGenerate(ctx context.Context, o *generateOptions, stdout, stderr io.Writer) int {
	cfg, nopts := o.cfg, o.nats
	out, labels, cfgOut, start, speed, stream := &o.out, &o.labels, &o.cfgOut, &o.start, &o.speed, &o.stream
	if (*out == "") == (nopts.URL == "") {
		fmt.Fprintln(stderr, "killswitch generate: give exactly one of --out and --nats")
		return 2
	}
	switch *start {
	case "":
	case "now":
		cfg.Start = time.Now().UTC().Add(-time.Duration(cfg.Days) * 24 * time.Hour)
	default:
		t, err := time.Parse(time.RFC3339, *start)
		if err != nil {
			fmt.Fprintf(stderr, "killswitch generate: --start: %v\n", err)
			return 2
		}
		cfg.Start = t
	}
	sc := scenario.New(cfg)
	if *labels != "" {
		b, _ := json.MarshalIndent(sc.Attacks(), "", "  ")
		if err := os.WriteFile(*labels, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "killswitch generate:", err)
			return 1
		}
	}
	if *cfgOut != "" {
		f, err := os.Create(*cfgOut)
		if err == nil {
			err = errors.Join(sc.WriteConfig(f), f.Close())
		}
		if err != nil {
			fmt.Fprintln(stderr, "killswitch generate:", err)
			return 1
		}
	}
	began := time.Now()
	var n int
	var err error
	if *out != "" {
		n, err = generateFile(sc, *out, stdout)
	} else {
		n, err = generatePublish(ctx, sc, nopts, *stream, *speed)
	}
	if err != nil {
		fmt.Fprintln(stderr, "killswitch generate:", err)
		return 1
	}
	fmt.Fprintf(stderr, "generated %d events (%s .. %s, %d attacks) in %s\n",
		n, sc.Start().Format(time.RFC3339), sc.End().Format(time.RFC3339), len(sc.Attacks()), time.Since(began).Round(time.Millisecond))
	return 0
}

func generateFile(sc *scenario.Scenario, path string, stdout io.Writer) (int, error) {
	if path == "-" {
		return sc.WriteNDJSON(stdout, false)
	}
	return sc.WriteFile(path)
}

func generatePublish(ctx context.Context, sc *scenario.Scenario, nopts natsconn.Options, stream string, speed float64) (int, error) {
	nopts.Name = "killswitch-generate"
	nc, err := nopts.Connect(zap.NewNop())
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	// Make sure the events have a stream to land in even before the service created it.
	// A sensor identity may not look streams up (no answer): the service creates it.
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = js.Stream(lctx, stream)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = nil
	} else if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{telnats.DefaultSubjectPrefix + ".>"}, Storage: jetstream.FileStorage})
		if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return 0, fmt.Errorf("create stream %s: %w", stream, err)
		}
	} else if err != nil {
		return 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{MsgID: telnats.ContentMsgID})
	if err != nil {
		return 0, err
	}
	var p *clock.Pacer
	if speed > 0 {
		p = clock.NewPacer(speed)
	}
	return sc.Publish(ctx, pub, p)
}
