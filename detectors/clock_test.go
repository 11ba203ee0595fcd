package detectors

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// The forged event times of issue 11: one event dated far in the future, one dated far
// in the past, for a known or a never-seen credential.
var (
	forged2099 = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	forged1971 = time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC)
)

// clockRun feeds evs to e. With tick, the engine is ticked before each honest event
// with that event's time, like the service's clock or replay's event-time ticks (the
// clock never reads a forged time). With restartAt >= 0, the engine is checkpointed
// after event restartAt and the rest goes to a fresh engine restored from the
// checkpoint, which is returned.
func clockRun(t *testing.T, cfg Config, evs []telemetry.Event, tick bool, restartAt int) (*Engine, []emitted) {
	t.Helper()
	e := mustEngine(t, cfg)
	var out []emitted
	for i := range evs {
		ev := &evs[i]
		emit := func(d Detection) { out = append(out, emitted{d, i}) }
		if tick && !ev.Time.Equal(forged2099) && !ev.Time.Equal(forged1971) {
			e.Tick(ev.Time, emit)
		}
		e.Process(ev, emit)
		if i == restartAt {
			snap := snapshotBytes(t, e)
			e = mustEngine(t, cfg)
			if err := e.Restore(bytes.NewReader(snap)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return e, out
}

func forgedEvent(tm time.Time, vendor, cred string, bytes int64) telemetry.Event {
	return telemetry.Event{Time: tm, Vendor: vendor, Credential: cred, Dst: "192.0.2.66", DstPort: 443, Bytes: bytes, Records: 1}
}

// insertAt returns evs with ev inserted before index i.
func insertAt(evs []telemetry.Event, i int, ev telemetry.Event) []telemetry.Event {
	out := append([]telemetry.Event{}, evs[:i]...)
	out = append(out, ev)
	return append(out, evs[i:]...)
}

// TestForgedFutureEvent: one event dated 2099 with one byte neither moves its vendor's
// clock nor opens a cap window in 2099; the cap detector still fires when the real
// traffic crosses the contract cap, also after a restart from a checkpoint taken right
// after the forged event.
func TestForgedFutureEvent(t *testing.T) {
	cfg := Config{Vendors: killswitch.Inventory{"acme": {Caps: []killswitch.Cap{{Bytes: 10 << 20, Per: time.Hour}}}}}
	other := series("other", "o1", "198.51.100.1", day(0), day(0).Add(3*time.Hour), time.Minute, constant(1000))
	before := series("acme", "k1", "198.51.100.1", day(0), day(0).Add(30*time.Minute), time.Minute, constant(100<<10))
	// 1 MiB a minute from 00:30: window 00:00 (3 MiB so far) crosses 10 MiB at 00:37,
	// window 01:00 at 01:10, window 02:00 at 02:10
	after := series("acme", "k1", "198.51.100.1", day(0).Add(30*time.Minute), day(0).Add(150*time.Minute), time.Minute, constant(1<<20))
	wantWindows := []time.Time{day(0), day(0).Add(time.Hour), day(0).Add(2 * time.Hour)}
	cases := []struct {
		name      string
		newVendor bool // the forged event is the vendor's first (the fleet is already running)
		tick      bool
		restart   bool
	}{
		{name: "known vendor, event time only"},
		{name: "known vendor, ticked", tick: true},
		{name: "known vendor, restart after the forged event", restart: true},
		{name: "known vendor, ticked, restart after the forged event", tick: true, restart: true},
		{name: "first event of a vendor, the fleet running", newVendor: true},
		{name: "first event of a vendor, ticked", newVendor: true, tick: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := merge(other, after)
			at := 0
			if !tc.newVendor {
				evs = merge(other, before, after)
			}
			for at < len(evs) && evs[at].Time.Before(day(0).Add(30*time.Minute)) {
				at++
			}
			evs = insertAt(evs, at, forgedEvent(forged2099, "acme", "k1", 1))
			restartAt := -1
			if tc.restart {
				restartAt = at
			}
			e, out := clockRun(t, cfg, evs, tc.tick, restartAt)
			caps := ofKind(out, KindCap)
			var windows []time.Time
			for _, g := range caps {
				windows = append(windows, g.d.Window.Start)
			}
			if tc.newVendor {
				wantWindows = []time.Time{day(0), day(0).Add(time.Hour), day(0).Add(2 * time.Hour)}
			}
			if !reflect.DeepEqual(windows, wantWindows) {
				t.Fatalf("cap windows %v, want %v", windows, wantWindows)
			}
			for _, g := range out {
				if g.d.DetectedAt.Before(day(0)) || g.d.DetectedAt.After(day(0).Add(3*time.Hour)) || g.d.Window.End.After(day(1)) {
					t.Errorf("detection outside the real time range: %s", g)
				}
			}
			if c := e.Counters(); c.ClockRejected != 1 {
				t.Errorf("ClockRejected = %d, want 1", c.ClockRejected)
			}
			if wm := e.Watermark("acme"); wm.After(day(0).Add(3 * time.Hour)) {
				t.Errorf("acme's watermark is %s", wm)
			}
		})
	}
}

// TestForgedPastEvent: an event dated 1971 followed by current traffic neither ends the
// learning period (no new_destination, spike or sustained detection before a day of
// observed history) nor makes a credential dormant, whether it is the first event of
// the engine, of its vendor while the fleet runs, or a late event of a known vendor
// for a known or never-seen credential; no detection is stamped outside the real time
// range.
func TestForgedPastEvent(t *testing.T) {
	start := day(9)
	// acme: k1 sends 64 KiB a minute to one destination for 3 hours, then a new
	// destination and a 50 MiB burst (a spike, were the learning period over)
	acme := func(from time.Time) []telemetry.Event {
		evs := series("acme", "k1", "198.51.100.1", from, from.Add(3*time.Hour), time.Minute, constant(64<<10))
		return merge(evs, []telemetry.Event{
			{Time: from.Add(2 * time.Hour), Vendor: "acme", Credential: "k1", Dst: "203.0.113.9", Bytes: 50 << 20, Records: 1},
		})
	}
	busy := series("busy", "b1", "198.51.100.1", day(0), start.Add(3*time.Hour), 5*time.Minute, constant(1000))
	// acme known for nine days: k1 and a background credential
	known := merge(
		series("acme", "k1", "198.51.100.1", day(0), start, 10*time.Minute, constant(64<<10)),
		series("acme", "bg", "198.51.100.1", day(0), start.Add(3*time.Hour), 10*time.Minute, constant(1000)),
	)
	cases := []struct {
		name   string
		events func() []telemetry.Event
		forged []telemetry.Event // inserted before the first event at or after start
		tick   bool
		// learning: acme is still learning at start (no new_destination may fire)
		learning bool
	}{
		{
			name:     "first event of the engine",
			events:   func() []telemetry.Event { return acme(start) },
			forged:   []telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100)},
			learning: true,
		},
		{
			name:     "first event of the engine, ticked",
			events:   func() []telemetry.Event { return acme(start) },
			forged:   []telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100)},
			tick:     true,
			learning: true,
		},
		{
			name:     "first event of the vendor, the fleet running",
			events:   func() []telemetry.Event { return merge(busy, acme(start)) },
			forged:   []telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100)},
			learning: true,
		},
		{
			name:     "first event of the vendor, the fleet running, ticked",
			events:   func() []telemetry.Event { return merge(busy, acme(start)) },
			forged:   []telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100)},
			tick:     true,
			learning: true,
		},
		{
			name: "known vendor: a known and a never-seen credential dated 1971",
			events: func() []telemetry.Event {
				return merge(known, series("acme", "ghost", "198.51.100.1", start, start.Add(time.Hour), time.Minute, constant(1000)))
			},
			forged: []telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100), forgedEvent(forged1971, "acme", "ghost", 100)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := tc.events()
			at := 0
			for at < len(evs) && evs[at].Time.Before(start) {
				at++
			}
			for i, f := range tc.forged {
				evs = insertAt(evs, at+i, f)
			}
			_, out := clockRun(t, Config{}, evs, tc.tick, -1)
			for _, g := range out {
				if g.d.DetectedAt.Before(day(0)) || g.d.Window.Start.Before(day(0)) {
					t.Errorf("detection stamped before the real time range: %s", g)
				}
				switch g.d.Detector {
				case KindDormant:
					t.Errorf("dormant credential after a forged past event: %s", g)
				case KindNewDestination, KindSpike, KindSustained:
					if tc.learning && g.d.Vendor == "acme" {
						t.Errorf("%s before the learning period ended: %s", g.d.Detector, g)
					}
				}
			}
		})
	}
}

// TestForgedPastEventRestart: a checkpoint taken right after an event dated 1971 (the
// vendor's first) restores an engine that is still learning.
func TestForgedPastEventRestart(t *testing.T) {
	evs := series("acme", "k1", "198.51.100.1", day(9), day(9).Add(3*time.Hour), time.Minute, constant(64<<10))
	evs = append([]telemetry.Event{forgedEvent(forged1971, "acme", "k1", 100)}, evs...)
	evs = append(evs, telemetry.Event{Time: day(9).Add(3 * time.Hour), Vendor: "acme", Credential: "k2", Dst: "203.0.113.9", Bytes: 50 << 20})
	e, out := clockRun(t, Config{}, evs, true, 0)
	if len(out) != 0 {
		t.Fatalf("detections %v, want none while learning", out)
	}
	v := e.vendors[e.vendorIdx["acme"]]
	if h := time.Duration(v.act.hist); h > 4*time.Hour {
		t.Fatalf("observed history %s after 3 hours of traffic", h)
	}
}

// TestObservedHistory checks the honest cases: the learning period and dormancy count
// observed history, so a sparse vendor finishes learning and a credential idle while
// its vendor keeps sending turns dormant; a vendor that is itself silent for days adds
// only MaxObservedGap.
func TestObservedHistory(t *testing.T) {
	hourly := series("acme", "k1", "198.51.100.1", day(0), day(1).Add(2*time.Hour), time.Hour, constant(1000))
	newDst := telemetry.Event{Time: day(1).Add(2 * time.Hour), Vendor: "acme", Credential: "k1", Dst: "203.0.113.9", Bytes: 10}
	idleCred := merge(
		series("acme", "bg", "198.51.100.1", day(0), day(8).Add(time.Hour), 10*time.Minute, constant(1000)),
		[]telemetry.Event{
			{Time: day(0), Vendor: "acme", Credential: "old", Dst: "198.51.100.1", Bytes: 100},
			{Time: day(8).Add(30 * time.Minute), Vendor: "acme", Credential: "old", Dst: "198.51.100.1", Bytes: 100},
		})
	silentVendor := []telemetry.Event{
		{Time: day(0), Vendor: "acme", Credential: "old", Dst: "198.51.100.1", Bytes: 100},
		{Time: day(8), Vendor: "acme", Credential: "old", Dst: "198.51.100.1", Bytes: 100},
	}
	cases := []struct {
		name   string
		events []telemetry.Event
		tick   bool
		want   map[Kind]int
	}{
		{name: "hourly vendor finishes learning", events: append(hourly, newDst), want: map[Kind]int{KindNewDestination: 1}},
		{name: "hourly vendor finishes learning, ticked", events: append(hourly, newDst), tick: true, want: map[Kind]int{KindNewDestination: 1}},
		{name: "credential idle 8 days while its vendor sends", events: idleCred, want: map[Kind]int{KindDormant: 1}},
		{name: "credential idle 8 days while its vendor sends, ticked", events: idleCred, tick: true, want: map[Kind]int{KindDormant: 1}},
		// intended: a vendor silent for 8 days observed nothing (at most MaxObservedGap)
		{name: "vendor silent 8 days, ticked", events: silentVendor, tick: true, want: map[Kind]int{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, out := clockRun(t, Config{}, tc.events, tc.tick, -1)
			got := map[Kind]int{}
			for _, g := range out {
				got[g.d.Detector]++
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("detections %v, want %v: %v", got, tc.want, out)
			}
			if c := e.Counters(); c.ClockRejected != 0 {
				t.Fatalf("ClockRejected = %d for honest traffic", c.ClockRejected)
			}
		})
	}
}

// TestClockGuard checks the guard's rules directly.
func TestClockGuard(t *testing.T) {
	ev := func(tm time.Time, vendor string) telemetry.Event {
		return telemetry.Event{Time: tm, Vendor: vendor, Credential: "k", Dst: "198.51.100.1", Bytes: 1}
	}
	base := day(0)
	cases := []struct {
		name         string
		tick         time.Time // zero: never ticked
		events       []telemetry.Event
		wantRejected uint64 // ClockRejected
		wantInvalid  uint64 // Rejected
		wantMaxT     time.Time
	}{
		{
			name:     "a vendor catching up with the fleet after a day of silence",
			events:   append(series("a", "k", "x", base, base.Add(25*time.Hour), 5*time.Minute, constant(1)), ev(base, "b"), ev(base.Add(25*time.Hour), "b")),
			wantMaxT: base.Add(25 * time.Hour),
		},
		{
			name:         "one vendor far ahead of the fleet",
			events:       []telemetry.Event{ev(base, "a"), ev(base, "b"), ev(base.Add(2*time.Hour), "b"), ev(base.Add(time.Minute), "a")},
			wantRejected: 1,
			wantMaxT:     base.Add(time.Minute),
		},
		{
			name:     "a lone vendor's hourly events, never ticked",
			events:   []telemetry.Event{ev(base, "a"), ev(base.Add(time.Hour), "a"), ev(base.Add(2*time.Hour), "a")},
			wantMaxT: base.Add(2 * time.Hour),
		},
		{
			name:         "never ticked: three agreeing events after a long silence move the clock",
			events:       []telemetry.Event{ev(base, "a"), ev(day(2), "a"), ev(day(2).Add(time.Minute), "a"), ev(day(2).Add(2*time.Minute), "a"), ev(day(2).Add(3*time.Minute), "a")},
			wantRejected: 2,
			wantMaxT:     day(2).Add(3 * time.Minute),
		},
		{
			name:         "never ticked: a lone forged event does not",
			events:       []telemetry.Event{ev(base, "a"), ev(forged2099, "a"), ev(base.Add(time.Minute), "a"), ev(forged2099.Add(time.Minute), "a"), ev(base.Add(2*time.Minute), "a")},
			wantRejected: 2,
			wantMaxT:     base.Add(2 * time.Minute),
		},
		{
			name:         "ticked: the clock is the reference",
			tick:         day(2),
			events:       []telemetry.Event{ev(base, "a"), ev(day(2).Add(5*time.Minute), "a"), ev(day(2).Add(20*time.Minute), "b"), ev(day(2).Add(14*time.Minute), "a")},
			wantRejected: 1,
			wantMaxT:     day(2).Add(14 * time.Minute),
		},
		{
			name:         "ticked: no confirmation by repetition",
			tick:         base,
			events:       []telemetry.Event{ev(base, "a"), ev(forged2099, "a"), ev(forged2099, "a"), ev(forged2099, "a"), ev(forged2099, "b")},
			wantRejected: 4,
			wantMaxT:     base,
		},
		{
			name:        "times before 1970 or from 2200 on are invalid",
			events:      []telemetry.Event{ev(base, "a"), ev(time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC), "a"), ev(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), "a"), ev(time.Time{}, "a")},
			wantInvalid: 3,
			wantMaxT:    base,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := mustEngine(t, Config{})
			if !tc.tick.IsZero() {
				e.Tick(tc.tick, nil)
			}
			for i := range tc.events {
				e.Process(&tc.events[i], nil)
			}
			c := e.Counters()
			if c.ClockRejected != tc.wantRejected || c.Rejected != tc.wantInvalid {
				t.Errorf("ClockRejected %d Rejected %d, want %d and %d", c.ClockRejected, c.Rejected, tc.wantRejected, tc.wantInvalid)
			}
			if got := utc(e.maxT); !got.Equal(tc.wantMaxT) {
				t.Errorf("engine event time %s, want %s", got, tc.wantMaxT)
			}
		})
	}
	var sum Counters
	sum.Add(Counters{ClockRejected: 2})
	sum.Add(Counters{ClockRejected: 3})
	if sum.ClockRejected != 5 {
		t.Errorf("Counters.Add: ClockRejected %d, want 5", sum.ClockRejected)
	}
}

// TestSnapshotV1Migration: a version-1 snapshot (testdata/snapshot-v1.bin, written by
// the previous format from the first half of two days of scenario seed 5) restores,
// and the engine then raises exactly the detections of one that never stopped (its
// state is not byte-identical: the version-3 guard envelope is migrated from the hour
// envelope, see sameStateButGuard).
func TestSnapshotV1Migration(t *testing.T) {
	e, never, rest := migrated(t, 1)
	want := detect(never, rest)
	for _, v := range e.vendors {
		if v.act.hist != v.act.lastT-v.act.firstT {
			t.Fatalf("vendor %s: migrated observed history %d, want %d", v.name, v.act.hist, v.act.lastT-v.act.firstT)
		}
	}
	if got := detect(e, rest); !reflect.DeepEqual(got, want) {
		t.Fatalf("after migrating: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
	sameStateButGuard(t, e, never)
}
