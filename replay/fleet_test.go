package replay

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/scenario"
)

// TestFleetShiftReported: a fleet-wide step (every vendor ×4 from day 4, 10:00) in a
// zero-configuration replay is one fleet-shift observation in the JSON report (and its
// summary) and in the HTML report, and no incident: the volume detectors judge each
// vendor net of the fleet's shift.
func TestFleetShiftReported(t *testing.T) {
	step := 4*24*time.Hour + 10*time.Hour
	sc, path := writeScenario(t, scenario.Config{Seed: 21, Days: 5, Vendors: 8, EventsPerMinute: 12, Attacks: -1,
		FleetShifts: []scenario.FleetShift{{At: step, Factor: 4}}})
	rep := replayFile(t, path, zeroConfig(Options{}))
	at := sc.Start().Add(step)
	var rise *FleetShift
	for i, f := range rep.FleetShifts {
		if parse(t, f.At).Equal(at) {
			rise = &rep.FleetShifts[i]
		}
	}
	if rise == nil || !rise.Discounted || rise.Factor < 3 || rise.Factor > 5 || rise.VendorsMoved*3 < 2*rise.VendorsTotal {
		t.Fatalf("fleet shifts %+v: want a discounted rise of about ×4 at %s moved by most vendors", rep.FleetShifts, at)
	}
	if rep.Summary.FleetShifts != len(rep.FleetShifts) {
		t.Errorf("summary counts %d fleet shifts, the report lists %d", rep.Summary.FleetShifts, len(rep.FleetShifts))
	}
	for _, in := range rep.Incidents {
		if !parse(t, in.DetectedAt).Before(at) {
			t.Errorf("incident after the step: %s/%s %v at %s", in.Vendor, in.Credential, in.Detectors, in.DetectedAt)
		}
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var generic struct {
		FleetShifts []map[string]any `json:"fleet_shifts"`
	}
	if err := json.Unmarshal(js.Bytes(), &generic); err != nil || len(generic.FleetShifts) != len(rep.FleetShifts) {
		t.Fatalf("JSON fleet_shifts: %v (%v)", generic.FleetShifts, err)
	}
	for _, k := range []string{"at", "vendors_moved", "vendors_total", "factor", "discounted"} {
		if _, ok := generic.FleetShifts[0][k]; !ok {
			t.Errorf("JSON fleet shift without %q: %v", k, generic.FleetShifts[0])
		}
	}
	var html bytes.Buffer
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	if h := html.String(); !strings.Contains(h, "Fleet-wide shifts") || !strings.Contains(h, "discounted") {
		t.Error("the HTML report does not show the fleet shifts")
	}
}
