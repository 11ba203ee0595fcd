package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	incnatskv "github.com/killswitch-dev/killswitch/incidents/natskv"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/nats-io/nats.go/jetstream"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

func detection(kind detectors.Kind, at time.Duration) detectors.Detection {
	key := detectors.Key{Vendor: "mailer", Credential: "mailer-api"}
	return detectors.Detection{ID: detectors.DetectionID(kind, key, t0.Add(at)), Detector: kind, Key: key,
		Severity: detectors.SeverityHigh, Score: 0.9, Observed: 5e9, Unit: "bytes/5m",
		FirstAnomalousAt: t0.Add(at - 30*time.Second), DetectedAt: t0.Add(at), Reason: "test"}
}

func openStore(t *testing.T) *incnatskv.Store {
	t.Helper()
	js, err := jetstream.New(testharness.Connect(t, testharness.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := incnatskv.Open(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The incidents bucket arbitrates which incident is a key's current one: the first claim
// wins, a claim while the winner is not stored yet must be retried, a claim after it is
// stored joins it, and once it is closed the next incident takes the key over.
func TestClaimArbitratesTheCurrentIncident(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	a := &incidents.Incident{ID: "inc-a", Vendor: "mailer", Credential: "mailer-api", State: incidents.StateOpen, LastDetectionAt: t0}
	b := &incidents.Incident{ID: "inc-b", Vendor: "mailer", Credential: "mailer-api", State: incidents.StateOpen, LastDetectionAt: t0}
	if got, err := st.Claim(ctx, a); err != nil || got.ID != "inc-a" {
		t.Fatalf("first claim: %v, %v", got, err)
	}
	if _, err := st.Claim(ctx, b); !errors.Is(err, incnatskv.ErrNotStoredYet) || !killswitch.IsRetryable(err) {
		t.Fatalf("a claim while the holder is not stored: %v, want a retryable ErrNotStoredYet", err)
	}
	if err := st.Save(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Claim(ctx, b); err != nil || got.ID != "inc-a" {
		t.Fatalf("a claim while the holder is open: %v, %v; want inc-a", got, err)
	}
	if got, err := st.Claim(ctx, a); err != nil || got.ID != "inc-a" {
		t.Fatalf("the holder claims again: %v, %v", got, err)
	}
	a.State = incidents.StateClosed
	if err := st.Save(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Claim(ctx, b); err != nil || got.ID != "inc-b" {
		t.Fatalf("a claim after the holder closed: %v, %v; want inc-b", got, err)
	}
	all, err := st.Incidents(ctx)
	if err != nil || len(all) != 1 || all[0].ID != "inc-a" {
		t.Fatalf("Incidents lists %v (%v): the claims' pointers must not show", all, err)
	}

	// An instance that claimed a key and died before storing its incident blocks the key
	// for ClaimGrace only.
	clk := clock.NewManual(time.Now())
	st.UseClock(clk)
	c := &incidents.Incident{ID: "inc-c", Vendor: "crm", Credential: "crm-api", State: incidents.StateOpen}
	d := &incidents.Incident{ID: "inc-d", Vendor: "crm", Credential: "crm-api", State: incidents.StateOpen}
	if got, err := st.Claim(ctx, c); err != nil || got.ID != "inc-c" {
		t.Fatalf("claim: %v, %v", got, err)
	}
	if _, err := st.Claim(ctx, d); !errors.Is(err, incnatskv.ErrNotStoredYet) {
		t.Fatalf("within the grace: %v, want ErrNotStoredYet", err)
	}
	clk.Advance(incnatskv.ClaimGrace + time.Second)
	if got, err := st.Claim(ctx, d); err != nil || got.ID != "inc-d" {
		t.Fatalf("after the grace, a claim never stored is taken over: %v, %v", got, err)
	}
}

// Two instances' responders, each handed a different detection of one key (as during a
// partition move), make one incident: the second joins the first's.
func TestTwoRespondersOneIncident(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, PollInterval: -1, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	responder := func() *pipeline.Responder {
		return pipeline.NewResponder(pipeline.ResponderConfig{Decider: pb, Ledger: ledger.NewMemory(), Store: st, Arbiter: st,
			Clock: clock.NewManual(t0.Add(time.Minute))})
	}
	r1, r2 := responder(), responder()
	if err := r1.Handle(ctx, detection(detectors.KindSpike, 0)); err != nil {
		t.Fatal(err)
	}
	if err := r2.Handle(ctx, detection(detectors.KindSustained, time.Second)); err != nil {
		t.Fatal(err)
	}
	all, err := st.Incidents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].DetectionCount != 2 {
		t.Fatalf("%d incidents (%+v), want one with both detections", len(all), all)
	}
	in, ok := r2.Current(detectors.Key{Vendor: "mailer", Credential: "mailer-api"})
	if !ok || in.ID != all[0].ID {
		t.Fatalf("the second responder's current incident is %+v, want %s", in, all[0].ID)
	}
}
