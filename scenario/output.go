package scenario

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
)

// WriteNDJSON writes the scenario's events to w in the telemetry wire format, one per
// line, gzip-compressed when gz is set, and returns how many it wrote.
func (s *Scenario) WriteNDJSON(w io.Writer, gz bool) (int, error) {
	var zw *gzip.Writer
	if gz {
		zw, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var buf []byte
	n := 0
	var err error
	s.Events(func(e *telemetry.Event) bool {
		buf = append(telemetry.AppendJSON(buf[:0], e), '\n')
		if _, err = bw.Write(buf); err != nil {
			return false
		}
		n++
		return true
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err != nil {
		return n, fmt.Errorf("scenario: write: %w", err)
	}
	return n, nil
}

// Publish publishes the scenario's events to JetStream as they "happen", paced by p
// (nil: as fast as possible, pipelined), until all are acknowledged or ctx is done; it
// returns how many it published.
func (s *Scenario) Publish(ctx context.Context, pub *telnats.Publisher, p *clock.Pacer) (int, error) {
	n := 0
	var err error
	s.Events(func(e *telemetry.Event) bool {
		if p != nil {
			if err = p.Wait(ctx, e.Time); err == nil {
				err = pub.Publish(ctx, e)
			}
		} else {
			_, err = pub.PublishAsync(e)
		}
		if err != nil {
			return false
		}
		n++
		return true
	})
	if err == nil && p == nil {
		err = pub.WaitAsync(ctx)
	}
	if err != nil {
		return n, fmt.Errorf("scenario: publish: %w", err)
	}
	return n, nil
}

// WriteConfig writes a Killswitch configuration holding the scenario's vendor inventory
// (see Inventory), for replays that should plan revocations.
func (s *Scenario) WriteConfig(w io.Writer) error {
	inv := s.Inventory()
	vendors := slices.Sorted(maps.Keys(inv))
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "# Vendor inventory of the generated scenario (seed %d); accessors are made up.\nvendors:\n", s.cfg.Seed)
	for _, v := range vendors {
		fmt.Fprintf(bw, "  %s:\n    owner: %s\n    credentials:\n", v, inv[v].Owner)
		creds := slices.Sorted(maps.Keys(inv[v].Credentials))
		for _, c := range creds {
			cr := inv[v].Credentials[c]
			switch cr.Kind {
			case killswitch.CredPolicy:
				fmt.Fprintf(bw, "      %s: {kind: policy, policy: %s}\n", c, cr.Policy)
			default:
				fmt.Fprintf(bw, "      %s: {kind: token, accessor: %s, protected: %t}\n", c, cr.Accessor, cr.Protected)
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("scenario: write config: %w", err)
	}
	return nil
}

// WriteFile writes the scenario's telemetry as NDJSON to the file at path (created or
// truncated; gzip when path ends in .gz) and returns the number of events.
func (s *Scenario) WriteFile(path string) (int, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	n, err := s.WriteNDJSON(f, strings.HasSuffix(path, ".gz"))
	return n, errors.Join(err, f.Close())
}
