package detectors

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// fleetScenario is a small fleet (8 vendors, one credential each) over five days; shift
// is the factor of a fleet-wide step on day 4 (a Friday) at 10:00 (1: none).
func fleetScenario(seed uint64, shift float64) scenario.Config {
	cfg := scenario.Config{Seed: seed, Days: 5, Vendors: 8, CredentialsPerVendor: 2, EventsPerMinute: 12, Attacks: -1}
	if shift != 1 {
		cfg.FleetShifts = []scenario.FleetShift{{At: fleetShiftAt, Factor: shift}}
	}
	return cfg
}

// fleetShiftAt is when fleetScenario's step happens, from the scenario's start.
const fleetShiftAt = 4*24*time.Hour + 10*time.Hour

func scenarioOf(cfg scenario.Config) []telemetry.Event {
	var evs []telemetry.Event
	scenario.New(cfg).Events(func(ev *telemetry.Event) bool {
		evs = append(evs, *ev)
		return true
	})
	return evs
}

// ticked runs evs through e as replay does: a Tick at every minute of event time,
// before the first event at or after it. at, when not nil, is called at every tick
// (after it) with the tick's time.
func ticked(e *Engine, evs []telemetry.Event, at func(now time.Time)) []Detection {
	var out []Detection
	emit := func(d Detection) { out = append(out, d) }
	var next time.Time
	for i := range evs {
		ev := &evs[i]
		if next.IsZero() {
			next = ev.Time.Truncate(time.Minute).Add(time.Minute)
		}
		for !ev.Time.Before(next) {
			e.Tick(next, emit)
			if at != nil {
				at(next)
			}
			next = next.Add(time.Minute)
		}
		e.Process(ev, emit)
	}
	return out
}

// volumeAfter returns the spike and sustained detections at or after t.
func volumeAfter(dets []Detection, t time.Time) []Detection {
	var out []Detection
	for _, d := range dets {
		if (d.Detector == KindSpike || d.Detector == KindSustained) && !d.DetectedAt.Before(t) {
			out = append(out, d)
		}
	}
	return out
}

// TestFleetShiftIsOneObservation: a fleet-wide step of every vendor's traffic is one
// fleet-shift observation, and the spike and sustained detectors judge each vendor net
// of it; the same engine without the fleet view raises volume detections on many
// vendors (what the observation replaces).
func TestFleetShiftIsOneObservation(t *testing.T) {
	cases := []struct {
		name   string
		seed   uint64
		factor float64
	}{
		{"×4 seed 21", 21, 4},
		{"×4 seed 22", 22, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fleetScenario(tc.seed, tc.factor)
			evs := scenarioOf(cfg)
			shiftAt := scenario.New(cfg).Start().Add(fleetShiftAt)

			blind := mustEngine(t, Config{})
			blind.fleetOwner = false // no fleet view: each vendor judged alone
			without := volumeAfter(ticked(blind, evs, nil), shiftAt)
			vendors := map[string]bool{}
			for _, d := range without {
				vendors[d.Vendor] = true
			}
			if len(vendors) < 3 {
				t.Fatalf("without the fleet view the step raises volume detections on %d vendors; the test needs a step that pages", len(vendors))
			}

			e := mustEngine(t, Config{})
			with := volumeAfter(ticked(e, evs, nil), shiftAt)
			t.Logf("after the step: %d volume detections on %d vendors without the fleet view, %d with it", len(without), len(vendors), len(with))
			for _, d := range with {
				t.Logf("with the fleet view: %s %s at %s: %s", d.Detector, d.Key, d.DetectedAt, d.Reason)
			}
			if len(with) > 1 {
				t.Errorf("%d volume detections after the step with the fleet view (%d vendors without it), want at most 1", len(with), len(vendors))
			}
			var rises []FleetShift
			for _, s := range e.FleetShifts() {
				if !s.At.Before(shiftAt.Add(-time.Hour)) && s.Factor > 1 {
					rises = append(rises, s)
				}
			}
			if len(rises) != 1 {
				t.Fatalf("fleet shifts from the step on: %+v, want one rise", rises)
			}
			r := rises[0]
			if !r.At.Equal(shiftAt) || !r.Discounted || r.VendorsMoved*3 < 2*r.VendorsTotal || r.Factor < 0.7*tc.factor || r.Factor > 1.3*tc.factor {
				t.Errorf("observation %+v: want at %s, most of the vendors, factor about %g", r, shiftAt, tc.factor)
			}
			if st := e.Fleet(); st.Shifts != uint64(len(e.FleetShifts())) {
				t.Errorf("status counts %d shifts, the log holds %d", st.Shifts, len(e.FleetShifts()))
			}
		})
	}
}

// TestFleetShiftFarLine: after a fleet-wide rise to a level the keys had not sent (×4),
// the hours of the day not yet seen at the new level (the nightly batches of the night
// after) do not cross the spike detector's far line (3× the most seen around that
// hour) on every key at once: a key the rise took above its envelope keeps the 8×
// bound for a day after the rise ended.
func TestFleetShiftFarLine(t *testing.T) {
	for _, seed := range []uint64{11, 13} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			cfg := scenario.Config{Seed: seed, Days: 5, Vendors: 12, EventsPerMinute: 12, Attacks: -1,
				FleetShifts: []scenario.FleetShift{{At: 3*24*time.Hour + 10*time.Hour, Factor: 4}}}
			evs := scenarioOf(cfg)
			shiftAt := scenario.New(cfg).Start().Add(cfg.FleetShifts[0].At)
			e := mustEngine(t, Config{})
			dets := volumeAfter(ticked(e, evs, nil), shiftAt)
			ended := false
			for _, s := range e.FleetShifts() {
				ended = ended || s.Factor > 1 && !s.At.Before(shiftAt) && !s.Until.IsZero()
			}
			if !ended {
				t.Fatalf("fleet shifts %+v: want the rise at %s seen and ended", e.FleetShifts(), shiftAt)
			}
			for _, d := range dets {
				t.Errorf("%s %s at %s after the ×4 rise: %s", d.Detector, d.Key, d.DetectedAt, d.Reason)
			}
		})
	}
}

// TestFleetShiftNeverDiscounts: while a fleet-wide rise is on and discounted, a cap, a
// new destination, a dormant credential and an expected-idle credential still fire on
// the event that crosses their line.
func TestFleetShiftNeverDiscounts(t *testing.T) {
	cfg := fleetScenario(23, 3)
	sc := scenario.New(cfg)
	start, shiftAt := sc.Start(), sc.Start().Add(fleetShiftAt)
	evs := scenarioOf(cfg)
	at := shiftAt.Add(40 * time.Minute)
	ev := func(t time.Time, vendor, cred, dst string, bytes int64) telemetry.Event {
		return telemetry.Event{Time: t, Vendor: vendor, Credential: cred, Dst: dst, DstPort: 443, Bytes: bytes, Records: 1}
	}
	attacks := []struct {
		ev   telemetry.Event
		kind Kind
	}{
		{ev(at, "payroll", "payroll-key-1", "198.51.102.10", 8<<30), KindCap},
		{ev(at.Add(time.Second), "analytics", "analytics-key-1", "203.0.113.99", 1<<20), KindNewDestination},
		{ev(at.Add(2*time.Second), "crm", "crm-old", "198.51.101.10", 1<<20), KindDormant},
		{ev(at.Add(3*time.Second), "mailer", "mailer-idle", "198.51.100.10", 1<<20), KindDormant},
	}
	// crm-old moved data once, on the first day, and has been idle since
	injected := []telemetry.Event{ev(start.Add(time.Hour+30*time.Second), "crm", "crm-old", "198.51.101.10", 1<<20)}
	for _, a := range attacks {
		injected = append(injected, a.ev)
	}
	for _, x := range injected {
		i, _ := slices.BinarySearchFunc(evs, x.Time, func(e telemetry.Event, t time.Time) int { return e.Time.Compare(t) })
		evs = slices.Insert(evs, i, x)
	}
	conf := Config{
		Settings: Settings{DormantAfter: 48 * time.Hour},
		Vendors: killswitch.Inventory{
			"payroll": {Caps: []killswitch.Cap{{Bytes: 4 << 30, Per: time.Hour}}},
			"mailer": {Credentials: map[string]killswitch.Credential{
				"mailer-idle": {Kind: killswitch.CredTokenAccessor, Accessor: "a-idle", ExpectedIdle: true},
			}},
		},
	}
	e := mustEngine(t, conf)
	var onAt FleetStatus
	dets := ticked(e, evs, func(now time.Time) {
		if now.Equal(at.Truncate(time.Minute)) {
			onAt = e.Fleet()
		}
	})
	if !onAt.On || onAt.Discount < 2 {
		t.Fatalf("at the attacks the fleet shift is %+v, want a discounted rise on", onAt)
	}
	for _, a := range attacks {
		found := false
		for _, d := range dets {
			if d.Detector == a.kind && d.Vendor == a.ev.Vendor && (d.Credential == a.ev.Credential || d.Credential == "") && d.DetectedAt.Equal(a.ev.Time) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s of %s/%s at %s during the fleet shift: not detected on its event", a.kind, a.ev.Vendor, a.ev.Credential, a.ev.Time)
		}
	}
}

// TestFleetShiftBound: an attacker who controls the telemetry of every other vendor
// fakes a ×16 fleet-wide rise to hide one vendor's exfiltration. The discount is bounded
// (never above FleetHeadroom times the most the key has ever sent in one bucket), so
// an exfiltration of 5× that is still caught, within the first bucket.
func TestFleetShiftBound(t *testing.T) {
	cfg := fleetScenario(24, 1)
	sc := scenario.New(cfg)
	fakeFrom := sc.Start().Add(fleetShiftAt)
	const victim, cred = "crm", "crm-key-1"
	evs := scenarioOf(cfg)
	bucket := func(t time.Time) int64 { return t.UnixNano() / int64(DefaultInterval) }
	most := map[int64]int64{}
	var top int64
	for i := range evs {
		ev := &evs[i]
		switch {
		case ev.Time.Before(fakeFrom):
			if ev.Vendor == victim {
				most[bucket(ev.Time)] += ev.Bytes
				top = max(top, most[bucket(ev.Time)])
			}
		case ev.Vendor != victim:
			ev.Bytes *= 16 // the fake fleet-wide rise
		}
	}
	exfilAt := fakeFrom.Add(30 * time.Minute)
	per := 5 * top / 30 // 5× the most the victim ever sent in a bucket, over 30 events in 5 minutes
	for j := range 30 {
		x := telemetry.Event{Time: exfilAt.Add(time.Duration(j) * 10 * time.Second), Vendor: victim, Credential: cred, Dst: "198.51.101.10", DstPort: 443, Bytes: per}
		i, _ := slices.BinarySearchFunc(evs, x.Time, func(e telemetry.Event, t time.Time) int { return e.Time.Compare(t) })
		evs = slices.Insert(evs, i, x)
	}
	e := mustEngine(t, Config{})
	var during FleetStatus
	dets := ticked(e, evs, func(now time.Time) {
		if now.Equal(exfilAt) {
			during = e.Fleet()
		}
	})
	if !during.On || during.Discount < 8 {
		t.Fatalf("the fake rise is %+v at the exfiltration, want a fleet shift on with a large factor", during)
	}
	caught := false
	for _, d := range dets {
		if d.Vendor == victim && d.Detector == KindSpike && !d.DetectedAt.Before(exfilAt) && d.DetectedAt.Before(exfilAt.Add(DefaultInterval)) {
			caught = true
		}
	}
	if !caught {
		t.Fatalf("an exfiltration of 5× the most %s ever sent in a bucket (%d bytes) hid behind a fake ×16 fleet shift", cred, top)
	}
}

// TestFleetShiftSharded: a Sharded engine (any number of shards) decides the same fleet
// shifts as one engine and raises the same detections; a snapshot taken while a shift
// is on restores it.
func TestFleetShiftSharded(t *testing.T) {
	cfg := fleetScenario(21, 3)
	evs := scenarioOf(cfg)
	one := mustEngine(t, Config{})
	want := sortDetections(ticked(one, evs, nil))
	wantShifts := one.FleetShifts()
	if len(wantShifts) == 0 {
		t.Fatal("no fleet shift: the test needs one")
	}
	for _, n := range []int{1, 3} {
		rec := &recorder{}
		s, err := NewSharded(Config{}, n, rec)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var next time.Time
		from := 0
		for i := range evs {
			if next.IsZero() {
				next = evs[i].Time.Truncate(time.Minute).Add(time.Minute)
			}
			if evs[i].Time.Before(next) {
				continue
			}
			submitBatches(t, s, evs[from:i], 500)
			from = i
			for !evs[i].Time.Before(next) {
				if err := s.TickAt(ctx, next); err != nil {
					t.Fatal(err)
				}
				next = next.Add(time.Minute)
			}
		}
		submitBatches(t, s, evs[from:], 500)
		if got := rec.sorted(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%d shards: %d detections, one engine: %d; they differ", n, len(got), len(want))
		}
		if got := s.FleetShifts(); !reflect.DeepEqual(got, wantShifts) {
			t.Fatalf("%d shards: fleet shifts %+v, one engine: %+v", n, got, wantShifts)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// a snapshot taken while the step's shift is on restores it, into an engine and into
	// a Sharded engine
	shiftAt := scenario.New(cfg).Start().Add(fleetShiftAt)
	cut := slices.IndexFunc(evs, func(ev telemetry.Event) bool { return !ev.Time.Before(shiftAt.Add(20 * time.Minute)) })
	e := mustEngine(t, Config{})
	ticked(e, evs[:cut], nil)
	if !e.Fleet().On {
		t.Fatal("no fleet shift on 20 minutes after the step")
	}
	snap := snapshotBytes(t, e)
	r := mustEngine(t, Config{})
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if got, want := r.Fleet(), e.Fleet(); got.On != want.On || got.Discount != want.Discount || got.Shifts != want.Shifts || !got.Current.At.Equal(want.Current.At) {
		t.Fatalf("restored fleet status %+v, want %+v", got, want)
	}
	if !bytes.Equal(snapshotBytes(t, r), snap) {
		t.Fatal("the restored engine's snapshot differs")
	}
	s, err := NewSharded(Config{}, 2, &recorder{}, WithInline())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var sb bytes.Buffer
	ss, err := NewSharded(Config{}, 3, &recorder{}, WithInline())
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	submitBatches(t, ss, evs[:cut], 500)
	if err := ss.TickAt(context.Background(), evs[cut-1].Time.Truncate(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// a Sharded engine gets the fleet state by its ticks; hand it the engine's
	ss.tickMu.Lock()
	ss.fleet.state = e.fleet
	ss.tickMu.Unlock()
	if err := ss.broadcast(context.Background(), func(i int, tr *tracker) shardMsg {
		return shardMsg{kind: msgFleet, flt: e.fleet, tr: tr}
	}); err != nil {
		t.Fatal(err)
	}
	if err := ss.Snapshot(context.Background(), &sb); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(context.Background(), &sb); err != nil {
		t.Fatal(err)
	}
	if got := s.Fleet(); !got.On || got.Discount != e.Fleet().Discount || got.Shifts != e.fleet.shifts {
		t.Fatalf("Sharded restore: fleet status %+v, want on with discount %g", got, e.Fleet().Discount)
	}
}

// TestSnapshotV3Migration: a version-3 snapshot (testdata/snapshot-v3.bin, written by
// the version-3 format from the first half of two days of scenario seed 5) restores
// with no fleet shift on and none observed, the engine then raises exactly the
// detections of one that never stopped, and writes the current version — the very
// snapshot of the engine that never stopped, once that engine's single-event envelope
// is migrated as the restore migrates it (asIfMigratedV5).
func TestSnapshotV3Migration(t *testing.T) {
	e, never, rest := migrated(t, 3)
	wantSnap := snapshotBytes(t, never)
	want := detect(never, rest)
	if st := e.Fleet(); st.On || st.Shifts != 0 || e.fleet != (fleetState{}) {
		t.Fatalf("migrated fleet state %+v", st)
	}
	if got := snapshotBytes(t, e); !bytes.Equal(got, wantSnap) || got[4] != snapshotVersion {
		t.Fatal("the migrated engine's snapshot is not the never-stopped engine's")
	}
	if got := detect(e, rest); !reflect.DeepEqual(got, want) {
		t.Fatalf("after migrating: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
}

// TestFleetDecide pins the decision rule on measured moves (pairs of move and noise).
func TestFleetDecide(t *testing.T) {
	pairs := func(moves ...float64) []float64 {
		var out []float64
		for _, m := range moves {
			out = append(out, m, 0.1)
		}
		return out
	}
	cases := []struct {
		name    string
		ticks   [][]float64
		wantDir int8
		wantLog int
	}{
		{"too few vendors", [][]float64{pairs(2, 2, 2, 2)}, 0, 0},
		{"most rise", [][]float64{pairs(1.5, 1.6, 1.4, 1.5, 0, 1.7)}, 1, 1},
		{"half rise: no quorum", [][]float64{pairs(1.5, 1.6, 1.4, 0, 0, 0)}, 0, 0},
		{"most dip", [][]float64{pairs(-1.5, -1.6, -1.4, -1.5, -1.5, 0)}, -1, 1},
		{"within their noise", [][]float64{{1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2}}, 0, 0},
		{"a rise, then back", [][]float64{pairs(1.5, 1.6, 1.4, 1.5, 1.5), pairs(0.1, 0, 0.2, 0.1, 0)}, 0, 1},
		{"a rise, a lull, the same rise: one observation", [][]float64{pairs(1.5, 1.6, 1.4, 1.5, 1.5), pairs(0.1, 0, 0.2, 0.1, 0), pairs(1.5, 1.6, 1.4, 1.5, 1.5)}, 1, 1},
		{"a rise, too few measured: still on", [][]float64{pairs(1.5, 1.6, 1.4, 1.5, 1.5), pairs(0, 0)}, 1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var d fleetDecider
			for i, moves := range tc.ticks {
				d.decide(moves, int64(i+1)*int64(time.Minute), uint32(i), int64(i)*int64(DefaultInterval))
			}
			if d.state.dir != tc.wantDir || len(d.log) != tc.wantLog {
				t.Fatalf("state %+v, %d observations; want direction %d, %d observations", d.state, len(d.log), tc.wantDir, tc.wantLog)
			}
			if tc.wantDir > 0 && math.Abs(d.state.discount()-1.5) > fleetStep {
				t.Errorf("discount %g, want the median move 1.5", d.state.discount())
			}
		})
	}
}

// TestSnapshotV4Migration: a version-4 snapshot (testdata/snapshot-v4.bin, written by
// the version-4 format from the first half of two days of scenario seed 5) restores
// with each key's single-event envelope taken from its hour envelope, the engine then
// raises exactly the detections of one that never stopped but lost the same history
// (asIfMigratedV5), and writes the current version — that engine's very snapshot.
func TestSnapshotV4Migration(t *testing.T) {
	e, never, rest := migrated(t, 4)
	wantSnap := snapshotBytes(t, never)
	want := detect(never, rest)
	for i := 0; i < e.keys.len(); i++ {
		if k := e.keys.at(uint32(i)); k.eventHi != k.hourHi || k.curTop != float32(k.curBytes) || k.prvTop != k.prvBytes {
			t.Fatalf("key %d: migrated single-event envelope %v (hour envelope %v), tops %g/%g", i, k.eventHi, k.hourHi, k.curTop, k.prvTop)
		}
	}
	if got := snapshotBytes(t, e); !bytes.Equal(got, wantSnap) || got[4] != snapshotVersion {
		t.Fatal("the migrated engine's snapshot is not the never-stopped engine's")
	}
	if got := detect(e, rest); !reflect.DeepEqual(got, want) {
		t.Fatalf("after migrating: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
}

// TestSnapshotV5Migration: a version-5 snapshot (testdata/snapshot-v5.bin, written by
// the version-5 format from the first half of two days of scenario seed 5, its models
// with day-of-week offsets) restores with those offsets skipped, the engine then raises
// exactly the detections of one that never stopped, and writes the current version —
// that engine's very snapshot: two days never use day-of-week offsets, so dropping
// them changes nothing else.
func TestSnapshotV5Migration(t *testing.T) { migratesExactly(t, 5) }

// migratesExactly checks that the version-v fixture restores to the very state of an
// engine that never stopped: the same snapshot (in the current version) and then the
// same detections.
func migratesExactly(t *testing.T, v int) {
	t.Helper()
	e, never, rest := migrated(t, v)
	wantSnap := snapshotBytes(t, never)
	want := detect(never, rest)
	if got := snapshotBytes(t, e); !bytes.Equal(got, wantSnap) || got[4] != snapshotVersion {
		t.Fatal("the migrated engine's snapshot is not the never-stopped engine's")
	}
	if got := detect(e, rest); !reflect.DeepEqual(got, want) {
		t.Fatalf("after migrating: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
}

// TestSnapshotV6Migration: a version-6 snapshot (testdata/snapshot-v6.bin, written by
// the version-6 format from the first half of two days of scenario seed 5) restores
// with no envelope run open, the engine then raises exactly the detections of one
// that never stopped, and writes the current version — that engine's very snapshot:
// the envelope run needs two days of history, so it is never open in those two days.
func TestSnapshotV6Migration(t *testing.T) { migratesExactly(t, 6) }
