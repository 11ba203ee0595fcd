package pipeline

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// recordingActor verifies every action at once: the orchestration under test is the
// Responder's, the real guard rails are tested in actions/.
type recordingActor struct {
	reqs []actions.Request
	at   time.Time
}

func (a *recordingActor) Act(_ context.Context, req actions.Request) ([]ledger.ActionRef, error) {
	a.reqs = append(a.reqs, req)
	var out []ledger.ActionRef
	for _, act := range req.Result.Decision.Actions {
		out = append(out, ledger.ActionRef{
			ID: req.Incident.ID + "/" + string(act.Type) + "/" + act.Credential, Type: string(act.Type),
			Credential: act.Credential, Status: ledger.ActionVerified, At: a.at,
		})
	}
	return out, nil
}

func (a *recordingActor) Budget(context.Context) playbooks.Budget {
	return playbooks.Budget{Remaining: 10, Limit: 10, Window: "1h0m0s"}
}

func critical(at time.Duration, kind detectors.Kind) detectors.Detection {
	key := detectors.Key{Vendor: "mailer", Credential: "mailer-api"}
	return detectors.Detection{
		ID: detectors.DetectionID(kind, key, t0.Add(at)), Detector: kind, Key: key,
		Severity: detectors.SeverityCritical, Score: 0.99, Observed: 5e9, Expected: detectors.Band{High: 1e8},
		Unit: "bytes/5m", FirstAnomalousAt: t0.Add(at - 30*time.Second), DetectedAt: t0.Add(at),
		Reason: "test burst",
	}
}

func TestResponderOneRevocationPerIncident(t *testing.T) {
	ctx := context.Background()
	cfg, err := config.Parse(strings.NewReader(capConfig))
	if err != nil {
		t.Fatal(err)
	}
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(t0.Add(time.Second))
	actor := &recordingActor{at: t0.Add(time.Second + 5*time.Millisecond)}
	led := ledger.NewMemory()
	r := NewResponder(ResponderConfig{
		Incidents: ledger.NewIncidents(ledger.IncidentConfig{}), Decider: pb, Actor: actor, Ledger: led,
		Inventory: cfg.Vendors, Clock: clk,
	})
	// A burst: the same detection redelivered and another of the same kind (nothing new),
	// one of a new kind (re-escalation), and one of traffic after the verified revocation
	// (re-escalation).
	for _, d := range []detectors.Detection{
		critical(0, detectors.KindSpike), critical(0, detectors.KindSpike),
		critical(500*time.Millisecond, detectors.KindSpike), critical(600*time.Millisecond, detectors.KindCap),
		critical(5*time.Minute, detectors.KindSpike),
	} {
		if err := r.Handle(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if len(actor.reqs) != 3 {
		t.Fatalf("%d decisions acted on, want 3 (new incident, new detector kind, after containment)", len(actor.reqs))
	}
	first := actor.reqs[0].Result.Decision.Actions
	if len(first) == 0 || first[0].Type != playbooks.ActionRevokeTokenAccessor || first[0].Credential != "mailer-api" {
		t.Fatalf("first decision = %+v", actor.reqs[0].Result.Decision)
	}
	inc, ok := r.Incidents().Current(detectors.Key{Vendor: "mailer", Credential: "mailer-api"})
	if !ok || inc.State != ledger.StateContained || inc.DetectionCount != 4 || inc.ExposureWindowSeconds == nil {
		t.Fatalf("incident = %+v", inc)
	}
	// contained when the first decision's revocation was verified
	if got := *inc.ExposureWindowSeconds; got < 31.004 || got > 31.006 {
		t.Fatalf("exposure window %v, want 31.005 s", got)
	}
	if _, err := ledger.Verify(led.All(ctx)); err != nil {
		t.Fatal(err)
	}
	// detection, incident and decision records; the redelivery recorded nothing new
	var n [4]int
	for _, rec := range led.Records() {
		switch rec.Type {
		case ledger.TypeDetection:
			n[0]++
		case ledger.TypeIncident:
			n[1]++
		case ledger.TypeDecision:
			n[2]++
		}
	}
	if n[0] != 4 || n[1] != 4 || n[2] != 3 {
		t.Fatalf("ledger has %d detections, %d incident notes, %d decisions", n[0], n[1], n[2])
	}
}

func TestResponderStormGuard(t *testing.T) {
	ctx := context.Background()
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var stormed [][]string
	r := NewResponder(ResponderConfig{
		Incidents: ledger.NewIncidents(ledger.IncidentConfig{}), Decider: pb, Ledger: ledger.NewMemory(),
		Clock: clock.NewManual(t0), Storm: StormConfig{Vendors: 3, Window: time.Minute},
		OnStorm: func(_ context.Context, v []string) { stormed = append(stormed, v) },
	})
	for i, v := range []string{"a", "b", "a", "c", "d"} {
		d := critical(time.Duration(i)*time.Second, detectors.KindSpike)
		d.Vendor, d.ID = v, d.ID+v
		if err := r.Handle(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if len(stormed) != 1 || strings.Join(stormed[0], ",") != "a,b,c" {
		t.Fatalf("storms = %v, want one with a,b,c", stormed)
	}
}
