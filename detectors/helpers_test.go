package detectors

import (
	"slices"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// t0 is a Monday, midnight UTC.
var t0 = time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)

func day(d int) time.Time { return t0.Add(time.Duration(d) * 24 * time.Hour) }

func mustEngine(t testing.TB, cfg Config, opts ...Option) *Engine {
	t.Helper()
	e, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// series makes events for vendor/cred every step in [from, to), each of bytes(t)
// bytes (skipped when 0), to dst.
func series(vendor, cred, dst string, from, to time.Time, step time.Duration, bytes func(time.Time) int64) []telemetry.Event {
	var evs []telemetry.Event
	for t := from; t.Before(to); t = t.Add(step) {
		b := bytes(t)
		if b <= 0 {
			continue
		}
		evs = append(evs, telemetry.Event{Time: t, Vendor: vendor, Credential: cred, Dst: dst, DstPort: 443, Bytes: b, Records: 1, Sensor: "gw-1"})
	}
	return evs
}

func constant(b int64) func(time.Time) int64 { return func(time.Time) int64 { return b } }

// merge sorts events by time (stable).
func merge(parts ...[]telemetry.Event) []telemetry.Event {
	var all []telemetry.Event
	for _, p := range parts {
		all = append(all, p...)
	}
	slices.SortStableFunc(all, func(a, b telemetry.Event) int { return a.Time.Compare(b.Time) })
	return all
}

type emitted struct {
	d     Detection
	index int // index of the event being processed when emitted (-1: Tick)
}

func run(e *Engine, evs []telemetry.Event) []emitted {
	var out []emitted
	for i := range evs {
		e.Process(&evs[i], func(d Detection) { out = append(out, emitted{d, i}) })
	}
	return out
}

// runRising runs evs through e, calling emit with the index of the event being
// processed and each detection. When riseAt is not zero, a fleet-wide rise is put in
// effect just before the first event at riseAt.
func runRising(e *Engine, evs []telemetry.Event, riseAt time.Time, emit func(i int, d Detection)) {
	for i := range evs {
		if !riseAt.IsZero() && evs[i].Time.Equal(riseAt) {
			e.applyFleet(fleetState{dir: 1, move: 0.1, ext: 0.1, since: e.bucketOf(evs[i].Time.UnixNano())})
		}
		e.Process(&evs[i], func(d Detection) { emit(i, d) })
	}
}

func ofKind(es []emitted, k Kind) []emitted {
	var out []emitted
	for _, e := range es {
		if e.d.Detector == k {
			out = append(out, e)
		}
	}
	return out
}

func (e emitted) String() string {
	return string(e.d.Detector) + " " + e.d.Key.String() + " at " + e.d.DetectedAt.Format(time.RFC3339) + ": " + e.d.Reason
}
