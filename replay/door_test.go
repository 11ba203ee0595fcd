package replay

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// A recording with forged event times injected (a day before each attack: the attacked
// credential dated 2099 and 1971, a never-seen credential of its vendor dated 1971)
// replays exactly as the clean recording: the forged events are refused and counted,
// the same attacks are caught, and no incident is stamped outside the recording's
// real time range.
func TestReplayRefusesForgedTimes(t *testing.T) {
	sc := scenario.New(scenario.Config{Seed: 4, Days: 10, Vendors: 5, EventsPerMinute: 2})
	attacks := sc.Attacks()
	if len(attacks) == 0 {
		t.Fatal("the scenario has no attack: not a test")
	}
	type injection struct {
		at time.Time
		ev []telemetry.Event
	}
	var inj []injection
	for _, a := range attacks {
		at := a.Start.Add(-24 * time.Hour)
		inj = append(inj, injection{at: at, ev: []telemetry.Event{
			{Time: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), Vendor: a.Vendor, Credential: a.Credential, Dst: "198.51.100.1", Bytes: 1},
			{Time: time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC), Vendor: a.Vendor, Credential: a.Credential, Dst: "198.51.100.1", Bytes: 1},
			{Time: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Vendor: a.Vendor, Credential: a.Vendor + "-never-seen", Dst: "198.51.100.1", Bytes: 1},
		}})
	}
	dir := t.TempDir()
	write := func(name string, forge bool) string {
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(f)
		var buf []byte
		done := make([]bool, len(inj))
		sc.Events(func(e *telemetry.Event) bool {
			for i, in := range inj {
				if forge && !done[i] && !e.Time.Before(in.at) {
					done[i] = true
					for _, fe := range in.ev {
						buf = telemetry.AppendJSON(buf[:0], &fe)
						w.Write(append(buf, '\n'))
					}
				}
			}
			buf = telemetry.AppendJSON(buf[:0], e)
			w.Write(append(buf, '\n'))
			return true
		})
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	clean, forged := write("clean.ndjson", false), write("forged.ndjson", true)

	o := planned(sc, Options{Playbooks: shipped(t)})
	want := replayFile(t, clean, o)
	o.Counters = telemetry.NewCounters()
	got, err := Run(t.Context(), telemetry.NewFileSource(telemetry.FileOptions{Counters: o.Counters}, forged), o)
	if err != nil {
		t.Fatal(err)
	}
	snap := o.Counters.Snapshot()
	n := uint64(len(inj))
	if snap.Rejected[telemetry.ReasonTimeInFuture] != n || snap.Rejected[telemetry.ReasonTimeTooOld] != 2*n || snap.TotalRejected() != 3*n {
		t.Fatalf("rejected %v, want %d in the future and %d too old", snap.Rejected, n, 2*n)
	}
	var a, b bytes.Buffer
	if err := want.WriteJSON(&a); err != nil {
		t.Fatal(err)
	}
	if err := got.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("the forged recording replays differently:\nclean:  %s\nforged: %s", a.String(), b.String())
	}
	// Equal reports: whatever the clean recording catches, the forged one catches.
	if len(got.Incidents) == 0 {
		t.Fatal("no incident: not a test")
	}
	first, last := parse(t, got.FirstEvent), parse(t, got.LastEvent)
	for _, in := range got.Incidents {
		for _, s := range []string{in.FirstAnomalousAt, in.DetectedAt} {
			if at := parse(t, s); at.Before(first) || at.After(last) {
				t.Errorf("incident %s stamped %s, outside [%s, %s]", in.ID, s, got.FirstEvent, got.LastEvent)
			}
		}
	}
}
