package detectors

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// TestScenario runs the engine with the zero configuration over two weeks of the
// labelled scenario (8 vendors, daily and weekly seasonality, nightly batches, noise)
// for three seeds: every injected attack must be detected by the detector made for it,
// quickly, and the benign traffic may raise at most a handful of volume detections.
func TestScenario(t *testing.T) {
	want := map[scenario.AttackKind]struct {
		kind  Kind
		delay time.Duration // detection must come within this time of the attack's start
	}{
		scenario.SmashAndGrab:   {KindSpike, 2 * time.Minute},
		scenario.NewDestination: {KindNewDestination, time.Minute},
		scenario.LowAndSlow:     {KindSustained, 90 * time.Minute},
		scenario.DormantWakeup:  {KindDormant, time.Minute},
	}
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			s, dets := scenarioDetections(t, scenario.Config{Seed: seed, Days: 14})
			attacks := s.Attacks()
			explained := make([]bool, len(dets))
			for _, a := range attacks {
				w := want[a.Kind]
				found := false
				for i, d := range dets {
					if d.Vendor != a.Vendor || d.DetectedAt.Before(a.Start) || d.DetectedAt.After(a.End.Add(time.Hour)) {
						continue
					}
					explained[i] = true // any detection of the attacked vendor during the attack is a true positive
					if d.Detector == w.kind && d.DetectedAt.Sub(a.Start) <= w.delay {
						found = true
					}
				}
				if !found {
					t.Errorf("%s on %s/%s at %s: no %s detection within %s", a.Kind, a.Vendor, a.Credential, a.Start, w.kind, w.delay)
				}
			}
			fp := 0
			for i, d := range dets {
				if !explained[i] {
					fp++
					t.Logf("unexplained: %s %s at %s: %s", d.Detector, d.Key, d.DetectedAt, d.Reason)
					if d.Detector == KindSilence || d.Detector == KindNewDestination || d.Detector == KindDormant {
						t.Errorf("false %s detection: %s", d.Detector, d.Reason)
					}
				}
			}
			if fp > 4 {
				t.Errorf("%d unexplained detections in two weeks of benign traffic, want at most 4", fp)
			}
		})
	}
}

// TestScenarioSmashAndGrabDelay: on young keys (the attacks fall on days 5 to 9,
// weekends included), whose models' lines may sit up to 8× the most seen at the hour,
// a smash-and-grab (40× the usual rate, megabytes per event) is caught by the spike
// detector on its first event at 3× the largest single event the key has sent around
// that hour of the day: within 10 s of its start. (With only the model's line and the
// 8× bound, these took up to 201 s; with the bucket's 3× far line alone, up to 38 s.)
func TestScenarioSmashAndGrabDelay(t *testing.T) {
	for _, seed := range []uint64{11, 13, 21} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			s, dets := scenarioDetections(t, scenario.Config{Seed: seed, Days: 10, Vendors: 12, Attacks: 2, EventsPerMinute: 12})
			for _, a := range s.Attacks() {
				if a.Kind != scenario.SmashAndGrab {
					continue
				}
				var first *Detection
				for i, d := range dets {
					if d.Detector == KindSpike && d.Key == (Key{Vendor: a.Vendor, Credential: a.Credential}) && !d.DetectedAt.Before(a.Start) && d.DetectedAt.Before(a.End) {
						first = &dets[i]
						break
					}
				}
				switch {
				case first == nil:
					t.Errorf("%s on %s/%s at %s: no spike", a.Kind, a.Vendor, a.Credential, a.Start)
				case first.DetectedAt.Sub(a.Start) > 10*time.Second:
					t.Errorf("%s on %s/%s at %s: spike after %s, want within 10s: %s", a.Kind, a.Vendor, a.Credential, a.Start, first.DetectedAt.Sub(a.Start), first.Reason)
				default:
					t.Logf("%s on %s/%s at %s: spike after %s", a.Kind, a.Vendor, a.Credential, a.Start, first.DetectedAt.Sub(a.Start))
				}
			}
		})
	}
}

// scenarioDetections runs the scenario cfg through a zero-configuration engine and
// returns the scenario and every detection raised.
func scenarioDetections(t *testing.T, cfg scenario.Config) (*scenario.Scenario, []Detection) {
	t.Helper()
	s := scenario.New(cfg)
	e := mustEngine(t, Config{})
	var dets []Detection
	s.Events(func(ev *telemetry.Event) bool {
		e.Process(ev, func(d Detection) { dets = append(dets, d) })
		return true
	})
	return s, dets
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestScenarioGolden pins the exact detections (IDs, evidence, reasons) of the
// zero-configuration engine on one seed of the scenario. Run with -update after an
// intended change to the detectors and review the diff.
func TestScenarioGolden(t *testing.T) {
	_, dets := scenarioDetections(t, scenario.Config{Seed: 1, Days: 14})
	got, err := json.MarshalIndent(dets, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", "scenario-seed1.json")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("detections differ from %s (run with -update after an intended change):\n%s", path, got)
	}
}
