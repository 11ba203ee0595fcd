package replay

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// A recording with forged event times injected (a day before each attack: the attacked
// credential dated 2099 and 1971, a never-seen credential of its vendor dated 1971)
// replays exactly as the clean recording: the forged events are refused and counted,
// the same attacks are caught, and no incident is stamped outside the recording's
// real time range.
func TestReplayRefusesForgedTimes(t *testing.T) {
	cfg := scenario.Config{Seed: 4, Days: 10, Vendors: 5, EventsPerMinute: 2}
	sc := scenario.New(cfg)
	if len(sc.Attacks()) == 0 {
		t.Fatal("the scenario has no attack: not a test")
	}
	dir := t.TempDir()
	write := func(name string, forge bool) string {
		path := filepath.Join(dir, name)
		c := cfg
		c.ForgedTimes = forge
		if _, err := scenario.New(c).WriteFile(path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	clean, forged := write("clean.ndjson", false), write("forged.ndjson", true)
	inj := sc.Attacks() // three forged events before each

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
