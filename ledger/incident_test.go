package ledger

import (
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
)

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
	}
	steps := []step{
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 0), EscalationNew, false},
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 0), EscalationNone, true}, // redelivery
		{det(detectors.KindSpike, detectors.SeverityHigh, "api", 5*time.Minute), EscalationNone, true},
		{det(detectors.KindCap, detectors.SeverityHigh, "api", 6*time.Minute), EscalationDetector, true},
		{det(detectors.KindCap, detectors.SeverityCritical, "api", 7*time.Minute), EscalationSeverity, true},
		{det(detectors.KindSpike, detectors.SeverityHigh, "other", 7*time.Minute), EscalationNew, false},
		// quiet for longer than the cooldown: a new incident for the same key
		{det(detectors.KindSpike, detectors.SeverityHigh, "other", 50*time.Minute), EscalationNew, false},
	}
	s := NewIncidents(IncidentConfig{})
	var prev *Incident
	for i, st := range steps {
		in, esc := s.Observe(st.d)
		if esc != st.want {
			t.Errorf("step %d: escalation %q, want %q", i, esc, st.want)
		}
		if prev != nil && (in == prev) != st.sameAsPr {
			t.Errorf("step %d: same incident = %v, want %v", i, in == prev, st.sameAsPr)
		}
		prev = in
	}
	api, _ := s.Current(detectors.Key{Vendor: "mailer", Credential: "api"})
	if api.DetectionCount != 4 || api.Severity != detectors.SeverityCritical ||
		len(api.Detectors) != 2 || !api.FirstAnomalousAt.Equal(t0.Add(-time.Minute)) {
		t.Fatalf("incident = %+v", api)
	}
}

func TestIncidentExposureWindow(t *testing.T) {
	s := NewIncidents(IncidentConfig{})
	in, _ := s.Observe(det(detectors.KindSpike, detectors.SeverityCritical, "api", 0))
	s.Decided(in, DecisionRef{ID: "dec-1", At: t0.Add(10 * time.Millisecond)})
	s.ActionUpdate(in, ActionRef{ID: "a1", Type: "notify", Status: ActionApplied, At: t0.Add(time.Second)}, false)
	if in.AppliedAt != nil {
		t.Fatal("a notification set AppliedAt")
	}
	s.ActionUpdate(in, ActionRef{ID: "a2", Type: "vault.revoke_token_accessor", Status: ActionApplied, At: t0.Add(20 * time.Millisecond)}, true)
	s.ActionUpdate(in, ActionRef{ID: "a2", Type: "vault.revoke_token_accessor", Status: ActionVerified, At: t0.Add(25 * time.Millisecond)}, true)
	if in.State != StateContained || len(in.Actions) != 2 {
		t.Fatalf("incident = %+v", in)
	}
	// first anomalous event was a minute before detection
	if got, want := *in.ExposureWindowSeconds, 60.025; got < want-1e-9 || got > want+1e-9 {
		t.Fatalf("exposure window %v, want %v", got, want)
	}
	// traffic after containment re-escalates
	if _, esc := s.Observe(det(detectors.KindSpike, detectors.SeverityHigh, "api", time.Minute)); esc != EscalationAfterContainment {
		t.Fatalf("escalation after containment = %q", esc)
	}
	if closed := s.Expire(t0.Add(2 * time.Hour)); len(closed) != 1 || closed[0].State != StateClosed {
		t.Fatalf("expire = %v", closed)
	}
}
