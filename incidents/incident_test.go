package incidents

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/detectors"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

func det(kind detectors.Kind, sev detectors.Severity, cred string, at time.Duration) detectors.Detection {
	key := detectors.Key{Vendor: "mailer", Credential: cred}
	return detectors.Detection{
		ID:               detectors.DetectionID(kind, key, t0.Add(at)),
		Detector:         kind,
		Key:              key,
		Severity:         sev,
		FirstAnomalousAt: t0.Add(at - time.Minute),
		DetectedAt:       t0.Add(at),
		AnomalousBytes:   int64(at / time.Second),
	}
}

func TestIncidentGrouping(t *testing.T) {
	type step struct {
		d        detectors.Detection
		want     Escalation
		sameAsPr bool // same incident as the previous step
		closes   bool // the step closes the key's previous incident
	}
	steps := []step{
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 0), EscalationNew, false, false},
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 0), EscalationNone, true, false}, // redelivery
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 5*time.Minute), EscalationNone, true, false},
		{det(detectors.KindCap, detectors.SeverityHigh, "api", 6*time.Minute), EscalationDetector, true, false},
		{det(detectors.KindCap, detectors.SeverityCritical, "api", 7*time.Minute), EscalationSeverity, true, false},
		{det(detectors.KindSpike, detectors.SeverityHigh, "other", 7*time.Minute), EscalationNew, false, false},
		// quiet for longer than the cooldown: a new incident for the same key
		{det(detectors.KindSpike, detectors.SeverityHigh, "other", 50*time.Minute), EscalationNew, false, true},
	}
	b := NewBook(Settings{})
	var prev *Incident
	for i, st := range steps {
		o := b.Observe(st.d)
		if o.Escalation != st.want {
			t.Errorf("step %d: escalation %q, want %q", i, o.Escalation, st.want)
		}
		if prev != nil && (o.Incident == prev) != st.sameAsPr {
			t.Errorf("step %d: same incident = %v, want %v", i, o.Incident == prev, st.sameAsPr)
		}
		if (o.Closed != nil) != st.closes {
			t.Errorf("step %d: closed %+v", i, o.Closed)
		}
		if o.Closed != nil && (o.Closed.State != StateClosed || !o.Closed.ClosedAt.Equal(t0.Add(37*time.Minute))) {
			t.Errorf("step %d: the superseded incident %+v should be closed at its last detection + the cooldown", i, o.Closed)
		}
		prev = o.Incident
	}
	api, _ := b.Current(detectors.Key{Vendor: "mailer", Credential: "api"})
	if api.DetectionCount != 4 || api.Severity != detectors.SeverityCritical ||
		len(api.Detectors) != 2 || !api.FirstAnomalousAt.Equal(t0.Add(-time.Minute)) {
		t.Fatalf("incident = %+v", api)
	}
	if b.Len() != 2 {
		t.Fatalf("%d current incidents, want 2", b.Len())
	}
}

func TestIncidentExposureWindow(t *testing.T) {
	b := NewBook(Settings{})
	in := b.Observe(det(detectors.KindSpike, detectors.SeverityCritical, "api", 0)).Incident
	b.Decided(in, DecisionRef{ID: "dec-1", At: t0.Add(10 * time.Millisecond)})
	if b.ActionUpdate(in, ActionRef{ID: "a1", Type: killswitch.ActionNotify, Status: ActionApplied, At: t0.Add(time.Second)}) || in.AppliedAt != nil {
		t.Fatal("a notification contained the incident or set AppliedAt")
	}
	b.ActionUpdate(in, ActionRef{ID: "a2", Type: killswitch.ActionRevokeTokenAccessor, Status: ActionApplied, At: t0.Add(20 * time.Millisecond)})
	if !b.ActionUpdate(in, ActionRef{ID: "a2", Type: killswitch.ActionRevokeTokenAccessor, Status: ActionVerified, At: t0.Add(25 * time.Millisecond)}) {
		t.Fatal("the verified revocation did not report containment")
	}
	if in.State != StateContained || len(in.Actions) != 2 {
		t.Fatalf("incident = %+v", in)
	}
	// first anomalous event was a minute before detection
	if got, want := *in.ExposureWindowSeconds, 60.025; got < want-1e-9 || got > want+1e-9 {
		t.Fatalf("exposure window %v, want %v", got, want)
	}
	// a second verified revocation does not move the window
	if b.ActionUpdate(in, ActionRef{ID: "a3", Type: killswitch.ActionRotateKV, Status: ActionVerified, At: t0.Add(time.Hour)}) {
		t.Fatal("contained twice")
	}
	// traffic after containment re-escalates
	if o := b.Observe(det(detectors.KindSpike, detectors.SeverityHigh, "api", time.Minute)); o.Escalation != EscalationAfterContainment {
		t.Fatalf("escalation after containment = %q", o.Escalation)
	}
	if closed := b.Expire(t0.Add(2 * time.Hour)); len(closed) != 1 || closed[0].State != StateClosed {
		t.Fatalf("expire = %v", closed)
	}
	if _, ok := b.Current(in.Key()); ok {
		t.Fatal("an expired incident is still current")
	}
}

func TestPlannedContains(t *testing.T) {
	for _, planned := range []bool{false, true} {
		b := NewBook(Settings{PlannedContains: planned})
		in := b.Observe(det(detectors.KindSpike, detectors.SeverityCritical, "api", 0)).Incident
		got := b.ActionUpdate(in, ActionRef{ID: "a", Type: killswitch.ActionRevokeTokenAccessor, Status: ActionPlanned, At: t0})
		if got != planned {
			t.Errorf("PlannedContains=%v: contained %v", planned, got)
		}
	}
}

func TestRestore(t *testing.T) {
	b := NewBook(Settings{})
	open := &Incident{ID: "inc-a", Vendor: "mailer", Credential: "api", State: StateOpen, LastDetectionAt: t0}
	b.Restore(open)
	b.Restore(&Incident{ID: "inc-old", Vendor: "mailer", Credential: "api", State: StateOpen, LastDetectionAt: t0.Add(-time.Hour)})
	b.Restore(&Incident{ID: "inc-closed", Vendor: "mailer", Credential: "db", State: StateClosed, LastDetectionAt: t0})
	if cur, ok := b.Current(open.Key()); !ok || cur.ID != "inc-a" || b.Len() != 1 {
		t.Fatalf("current = %+v, %d incidents", cur, b.Len())
	}
}

func TestSettingsValidate(t *testing.T) {
	if err := (Settings{}).Validate(); err != nil {
		t.Fatal(err)
	}
	err := Settings{Cooldown: -1, MaxDetections: -1, Storm: StormSettings{Window: -1}}.Validate()
	for _, want := range []string{"incidents.cooldown", "incidents.max_detections", "incidents.storm.window"} {
		if !errors.Is(err, killswitch.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want an error naming %s", err, want)
		}
	}
}

func TestStormGuard(t *testing.T) {
	g := NewStormGuard(StormSettings{Vendors: 3, Window: time.Minute})
	steps := []struct {
		vendor string
		counts bool
		at     time.Duration
		storm  string // the vendors held when Escalated reports a change
		until  time.Duration
	}{
		{"a", true, 0, "", 0}, {"b", true, time.Second, "", 0}, {"a", true, 2 * time.Second, "", 0},
		{"x1", false, 2 * time.Second, "", 0}, // made-up names never count
		{"x2", false, 2 * time.Second, "", 0},
		{"c", true, 3 * time.Second, "a,b,c", time.Minute + 3*time.Second},     // the third vendor within the window
		{"d", true, 4 * time.Second, "a,b,c,d", time.Minute + 4*time.Second},   // joins the storm
		{"x3", false, 5 * time.Second, "", 0},                                  // still never counts
		{"b", true, 30 * time.Second, "a,b,c,d", time.Minute + 30*time.Second}, // held longer
		{"e", true, 5 * time.Minute, "", 0},                                    // the window moved on: the storm is over
		{"f", true, 5*time.Minute + time.Second, "", 0},
		{"g", true, 5*time.Minute + 2*time.Second, "e,f,g", 6*time.Minute + 2*time.Second}, // a new storm
	}
	for _, st := range steps {
		s, changed := g.Escalated(st.vendor, st.counts, t0.Add(st.at))
		if got := strings.Join(s.Vendors, ","); got != st.storm || changed != (st.storm != "") {
			t.Errorf("%s at %s: storm %q (changed %v), want %q", st.vendor, st.at, got, changed, st.storm)
		}
		if changed && !s.Until.Equal(t0.Add(st.until)) {
			t.Errorf("%s at %s: held until %s, want %s", st.vendor, st.at, s.Until.Sub(t0), st.until)
		}
	}
	if cur, ok := g.Current(t0.Add(5*time.Minute + 3*time.Second)); !ok || strings.Join(cur.Vendors, ",") != "e,f,g" {
		t.Errorf("Current = %v %v, want the storm of e,f,g", cur, ok)
	}
	if _, ok := g.Current(t0.Add(7 * time.Minute)); ok {
		t.Error("Current reports a storm after its hold ended")
	}
	if off := NewStormGuard(StormSettings{Vendors: -1}); func() bool { _, c := off.Escalated("a", true, t0); return c }() {
		t.Fatal("a disabled guard reported a storm")
	}
}

// TestStormGuardUnknownNames: however many made-up vendors escalate, no storm.
func TestStormGuardUnknownNames(t *testing.T) {
	g := NewStormGuard(StormSettings{Vendors: 10, Window: 5 * time.Minute})
	for i := range 10000 {
		if _, changed := g.Escalated(fmt.Sprintf("x%04d", i), false, t0.Add(time.Duration(i)*time.Millisecond)); changed {
			t.Fatalf("made-up vendor %d started a storm", i)
		}
	}
}

func TestMemoryStore(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	in := &Incident{ID: "inc-1", Vendor: "mailer", DetectedAt: t0}
	if err := m.Save(ctx, in); err != nil {
		t.Fatal(err)
	}
	in.State = StateClosed // the store keeps its own copy
	if err := m.Save(ctx, &Incident{ID: "inc-2", Vendor: "mailer", DetectedAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	got, err := m.Incident(ctx, "inc-1")
	if err != nil || got.State != "" {
		t.Fatalf("incident = %+v, %v", got, err)
	}
	if _, err := m.Incident(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing incident: %v", err)
	}
	all, _ := m.Incidents(ctx)
	if len(all) != 2 || all[0].ID != "inc-2" {
		t.Fatalf("incidents %+v, want the newest first", all)
	}
}

// TestSilentSensorsEscalate: sensor-level silences (no vendor) share one incident, and
// each sensor that goes silent for the first time in it escalates (new_sensor).
func TestSilentSensorsEscalate(t *testing.T) {
	silence := func(sensor string, at time.Duration) detectors.Detection {
		return detectors.Detection{ID: sensor + at.String(), Detector: detectors.KindSilence, Severity: detectors.SeverityMedium,
			Sensor: sensor, FirstAnomalousAt: t0.Add(at - time.Minute), DetectedAt: t0.Add(at)}
	}
	b := NewBook(Settings{})
	for i, st := range []struct {
		d    detectors.Detection
		want Escalation
	}{
		{silence("gw-1", 0), EscalationNew},
		{silence("gw-2", time.Minute), EscalationSensor},
		{silence("gw-1", 2*time.Minute), EscalationNone},
		{silence("gw-3", 3*time.Minute), EscalationSensor},
	} {
		if o := b.Observe(st.d); o.Escalation != st.want {
			t.Errorf("step %d: escalation %q, want %q", i, o.Escalation, st.want)
		}
	}
	if b.Len() != 1 {
		t.Fatalf("%d incidents, want the one of every silent sensor", b.Len())
	}
}
