package pipeline

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// The telemetry health the playbooks see is computed by the pipeline on every tick, the
// same in replay and in the service: sensors known and silent (from the detectors), the
// share of telemetry rejected since the previous tick, and how far the newest event
// trails the clock.
func TestTickHealth(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewManual(time.Time{})
	counters := telemetry.NewCounters()
	p, err := New(Config{
		Detectors: detectors.Config{Settings: detectors.Settings{
			Interval: time.Minute, LearningPeriod: 10 * time.Minute, SilenceAfter: 5 * time.Minute,
		}},
		Inline:    true,
		Responder: ResponderConfig{Decider: shipped(t), Ledger: ledger.NewMemory()},
		Counters:  counters, Virtual: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// 30 minutes of events every 30 s from two sensors; sensor b stops after 20 minutes.
	// One line in ten does not decode.
	var b strings.Builder
	for i := range 60 {
		at := t0.Add(time.Duration(i) * 30 * time.Second).Format(time.RFC3339Nano)
		for _, sensor := range []string{"a", "b"} {
			if sensor == "b" && i >= 40 {
				continue
			}
			fmt.Fprintf(&b, `{"time":%q,"vendor":"mailer","credential":"api","bytes":1000,"sensor":%q}`+"\n", at, sensor)
		}
		if i%10 == 0 {
			b.WriteString("{not json\n")
		}
	}
	if _, err := telemetry.Read(ctx, "t.ndjson", strings.NewReader(b.String()), p.Ingest(), telemetry.FileOptions{Counters: counters}); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(30 * time.Minute)
	if err := p.Tick(ctx, now); err != nil {
		t.Fatal(err)
	}
	h := p.Health()
	if h.SensorsExpected != 2 || h.SensorsReporting != 1 || len(h.SilentSensors) != 1 || h.SilentSensors[0] != "b" {
		t.Fatalf("sensors: %+v", h)
	}
	if want := 6.0 / 106; h.DeadLetterRate < want-1e-9 || h.DeadLetterRate > want+1e-9 {
		t.Fatalf("dead-letter rate %v, want %v", h.DeadLetterRate, want)
	}
	if h.LagSeconds != 30 {
		t.Fatalf("lag %v s, want 30 (the last event was at 29m30s)", h.LagSeconds)
	}
	// Nothing new since: the rate stands.
	if err := p.Tick(ctx, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if h2 := p.Health(); h2.DeadLetterRate != h.DeadLetterRate {
		t.Fatalf("rate changed without new telemetry: %v", h2.DeadLetterRate)
	}
}
