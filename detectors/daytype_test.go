package detectors

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// sameStateButGuard fails unless got, a migrated engine, writes a current snapshot
// that restores to itself, and tracks the keys want (the never-stopped engine) tracks.
// Its state is not byte-identical to want's: a migrated key's guard envelope
// (keyState.seenHi) starts as its hour envelope, runs of excess included, and the
// guard then steers the model's CUSUM; the detections are compared by the callers.
func sameStateButGuard(t *testing.T, got, want *Engine) {
	t.Helper()
	if got.keys.len() != want.keys.len() {
		t.Fatalf("%d keys, want %d", got.keys.len(), want.keys.len())
	}
	snap := snapshotBytes(t, got)
	if v := snap[4]; v != snapshotVersion {
		t.Fatalf("a migrated engine writes version %d, want %d", v, snapshotVersion)
	}
	again := mustEngine(t, snapshotConfig)
	if err := again.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, again), snap) {
		t.Fatal("the migrated engine's snapshot does not restore to itself")
	}
}

// asIfMigratedV5 does to a never-stopped engine what restoring a snapshot older than
// version 5 does to its keys (see decodeKeyV5: the single-event envelope from the hour
// envelope) and recomputes their lines, so that a migration test compares a migrated
// engine with one that never stopped but lost the same history.
func asIfMigratedV5(e *Engine) {
	for i := 0; i < e.keys.len(); i++ {
		k := e.keys.at(uint32(i))
		k.eventHi = k.hourHi
		k.curTop, k.prvTop = float32(k.curBytes), k.prvBytes
	}
	e.finishRestore()
}

// TestSnapshotV2Migration: a version-2 snapshot (testdata/snapshot-v2.bin, written by
// the version-2 format from the first half of two days of scenario seed 5) restores
// into version 3 (guard envelopes from the hour envelopes, no weekend learned), the
// engine then raises exactly the detections of one that never stopped, and writes
// version 3.
func TestSnapshotV2Migration(t *testing.T) {
	e, never, rest := migrated(t, 2)
	want := detect(never, rest)
	for i := 0; i < e.keys.len(); i++ {
		k := e.keys.at(uint32(i))
		if k.seenHi != k.hourHi || k.model.dayN != 0 || k.model.dayOff != 0 || k.model.dayGate != 0 {
			t.Fatalf("key %d: migrated guard %v (hour envelope %v), weekend %d/%d/%g", i, k.seenHi, k.hourHi, k.model.dayN, k.model.dayOff, k.model.dayGate)
		}
	}
	if got := detect(e, rest); !reflect.DeepEqual(got, want) {
		t.Fatalf("after migrating: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
	sameStateButGuard(t, e, never)
}

// TestScenarioWeekly runs the zero-configuration engine over four weeks of the
// scenario with a fleet-wide holiday (a Wednesday at 0.3× the usual level), for two
// seeds: the weekly path is exercised (weekends learned from the first one, four
// weekends and a holiday in a row), every attack is caught, and after day 3 the benign
// traffic raises at most 0.1 detections per vendor-day (silence alerts aside: they
// never revoke), with no burst at the weekday/weekend transitions or after the
// holiday.
func TestScenarioWeekly(t *testing.T) {
	const days, vendors = 28, 8
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			s := scenario.New(scenario.Config{Seed: seed, Days: days, Vendors: vendors, Holidays: []int{16}})
			e := mustEngine(t, Config{})
			var dets []Detection
			s.Events(func(ev *telemetry.Event) bool {
				e.Process(ev, func(d Detection) { dets = append(dets, d) })
				return true
			})
			explained := make([]bool, len(dets))
			for _, a := range s.Attacks() {
				found := false
				for i, d := range dets {
					if d.Vendor == a.Vendor && !d.DetectedAt.Before(a.Start) && !d.DetectedAt.After(a.End.Add(time.Hour)) {
						explained[i], found = true, true
					}
				}
				if !found {
					t.Errorf("%s on %s/%s at %s: not detected", a.Kind, a.Vendor, a.Credential, a.Start)
				}
			}
			after := s.Start().Add(3 * 24 * time.Hour)
			perHour := map[time.Time]int{}
			fp := 0
			for i, d := range dets {
				if explained[i] || d.FirstAnomalousAt.Before(after) || d.Detector == KindSilence {
					continue
				}
				fp++
				perHour[d.DetectedAt.Truncate(time.Hour)]++
				t.Logf("unexplained: %s %s at %s: %s", d.Detector, d.Key, d.DetectedAt, d.Reason)
			}
			if max := 0.1 * vendors * (days - 3); float64(fp) > max {
				t.Errorf("%d unexplained detections after day 3, want at most %g (0.1 per vendor-day)", fp, max)
			}
			for h, n := range perHour {
				if n > 2 {
					t.Errorf("%d unexplained detections in the hour from %s: a burst", n, h)
				}
			}
			learned, weekend := 0, 0
			for i := 0; i < e.keys.len(); i++ {
				m := &e.keys.at(uint32(i)).model
				if m.dayN > 0 {
					learned++
				}
				if _, on := m.WeekendOffset(); on {
					weekend++
				}
			}
			if learned == 0 {
				t.Error("no key learned from a weekend in four weeks")
			}
			t.Logf("%d detections, %d unexplained after day 3; of %d keys %d learned weekends, %d use a weekend offset",
				len(dets), fp, e.keys.len(), learned, weekend)
		})
	}
}
