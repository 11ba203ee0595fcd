package faults

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/scenario"
)

// TestReplayWithForgedTimes: a 10-day, 12-vendor recording with 8 attacks, replayed by
// the binary with zero configuration, clean and with three forged events injected a day
// before each attack (the attacked credential dated 2099 and 1971, a never-seen
// credential of its vendor dated 1971). On main the forged recording caught 0 of 8. Now
// both reports are byte-identical, every attack the clean one catches is caught, and no
// incident is stamped outside the recording's real time range.
func TestReplayWithForgedTimes(t *testing.T) {
	t.Parallel()
	rate := 0.5
	if *long {
		rate = 6 // the scenario's default: about 2 million events
	}
	cfg := scenario.Config{Seed: 11, Days: 10, Vendors: 12, Attacks: 2, EventsPerMinute: rate}
	sc := scenario.New(cfg)
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
	replay := func(path string) ([]byte, report) {
		out := path + ".json"
		code, stdout, stderr := testharness.Run(t, nil, "replay", "--telemetry", path, "--json", out)
		if code != 0 {
			t.Fatalf("replay %s: exit %d\n%s%s", path, code, stdout, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var rep report
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatal(err)
		}
		return b, rep
	}
	cleanJSON, clean := replay(write("clean.ndjson", false))
	forgedJSON, forged := replay(write("forged.ndjson", true))
	if !bytes.Equal(cleanJSON, forgedJSON) {
		t.Fatalf("the forged recording replays differently (%d vs %d incidents)", len(clean.Incidents), len(forged.Incidents))
	}
	caught := 0
	for _, a := range sc.Attacks() {
		for _, in := range forged.Incidents {
			if in.Vendor == a.Vendor && (in.Credential == "" || in.Credential == a.Credential) &&
				!in.DetectedAt.Before(a.Start) && in.DetectedAt.Before(a.End.Add(6*time.Hour)) {
				caught++
				break
			}
		}
	}
	if caught == 0 {
		t.Fatal("no attack caught: not a test")
	}
	for _, in := range forged.Incidents {
		if in.FirstAnomalousAt.Before(forged.FirstEvent) || in.DetectedAt.After(forged.LastEvent) {
			t.Errorf("incident %s stamped %s … %s, outside [%s, %s]", in.ID, in.FirstAnomalousAt, in.DetectedAt, forged.FirstEvent, forged.LastEvent)
		}
	}
	t.Logf("%d events, %d incidents, %d of %d attacks caught, clean and forged (24 forged events) byte-identical, none outside the recording's range",
		forged.Events, len(forged.Incidents), caught, len(sc.Attacks()))
}

// report is what the suite reads of the replay JSON report.
type report struct {
	Events     int       `json:"events"`
	FirstEvent time.Time `json:"first_event"`
	LastEvent  time.Time `json:"last_event"`
	Incidents  []struct {
		ID               string    `json:"id"`
		Vendor           string    `json:"vendor"`
		Credential       string    `json:"credential"`
		FirstAnomalousAt time.Time `json:"first_anomalous_at"`
		DetectedAt       time.Time `json:"detected_at"`
	} `json:"incidents"`
}
