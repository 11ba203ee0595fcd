package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

// inventory has one vendor with a revocable token.
var inventory = killswitch.Inventory{"mailer": {
	Caps:        []killswitch.Cap{{Credential: "mailer-api", Bytes: 1000000, Per: time.Hour}},
	Credentials: map[string]killswitch.Credential{"mailer-api": {Kind: killswitch.CredTokenAccessor, Accessor: "acc-1"}},
}}

// recordingActor verifies every action at once: the orchestration under test is the
// Responder's, the real guard rails are tested in actions/.
type recordingActor struct {
	mu   sync.Mutex
	reqs []actions.Request
	at   time.Time
	// block, when set, holds Act for the vendor until the channel is closed.
	block map[string]chan struct{}
}

func (a *recordingActor) Act(ctx context.Context, req actions.Request) ([]incidents.ActionRef, error) {
	if ch := a.block[req.Incident.Vendor]; ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	a.mu.Lock()
	a.reqs = append(a.reqs, req)
	a.mu.Unlock()
	var out []incidents.ActionRef
	for _, act := range req.Result.Decision.Actions {
		out = append(out, incidents.ActionRef{
			ID: req.Incident.ID + "/" + string(act.Type) + "/" + act.Credential, Type: act.Type,
			Credential: act.Credential, Status: incidents.ActionVerified, At: a.at,
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

func shipped(t testing.TB) *playbooks.Engine {
	t.Helper()
	pb, err := playbooks.New(context.Background(), playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, PollInterval: -1, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return pb
}

func TestResponderOneRevocationPerIncident(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewManual(t0.Add(time.Second))
	actor := &recordingActor{at: t0.Add(time.Second + 5*time.Millisecond)}
	led := ledger.NewMemory()
	r := NewResponder(ResponderConfig{Decider: shipped(t), Actor: actor, Ledger: led, Inventory: inventory, Clock: clk})
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
	if len(first) == 0 || first[0].Type != killswitch.ActionRevokeTokenAccessor || first[0].Credential != "mailer-api" {
		t.Fatalf("first decision = %+v", actor.reqs[0].Result.Decision)
	}
	inc, ok := r.Current(detectors.Key{Vendor: "mailer", Credential: "mailer-api"})
	if !ok || inc.State != incidents.StateContained || inc.DetectionCount != 4 || inc.ExposureWindowSeconds == nil {
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
	n := map[ledger.RecordType]int{}
	for _, rec := range led.Records() {
		n[rec.Type]++
	}
	if n[ledger.TypeDetection] != 4 || n[ledger.TypeIncident] != 4 || n[ledger.TypeDecision] != 3 {
		t.Fatalf("ledger records %v, want 4 detections, 4 incident notes, 3 decisions", n)
	}
}

// failingActor fails its first fails calls (the ledger unavailable, say), then acts as
// recordingActor does.
type failingActor struct {
	recordingActor
	fails int
}

func (a *failingActor) Act(ctx context.Context, req actions.Request) ([]incidents.ActionRef, error) {
	a.mu.Lock()
	fail := a.fails > 0
	a.fails--
	a.mu.Unlock()
	if fail {
		return nil, killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("ledger unavailable"))
	}
	return a.recordingActor.Act(ctx, req)
}

// TestResponderResumesAfterFailedAct: when carrying out a decision fails, the detection
// is handed back; delivered again (to this instance or, through the stored incident, to
// another), it is decided and carried out again, once; a delivery after that does nothing.
func TestResponderResumesAfterFailedAct(t *testing.T) {
	ctx := context.Background()
	actor := &failingActor{recordingActor: recordingActor{at: t0.Add(2 * time.Second)}, fails: 2}
	led := ledger.NewMemory()
	r := NewResponder(ResponderConfig{Decider: shipped(t), Actor: actor, Ledger: led, Inventory: inventory, Clock: clock.NewManual(t0.Add(time.Second))})
	d := critical(0, detectors.KindSpike)
	for i, wantErr := range []bool{true, true, false, false} {
		if err := r.Handle(ctx, d); (err != nil) != wantErr {
			t.Fatalf("delivery %d: err = %v, want an error: %v", i+1, err, wantErr)
		}
	}
	if len(actor.reqs) != 1 {
		t.Fatalf("%d decisions carried out, want 1 (after two failures, then nothing)", len(actor.reqs))
	}
	inc, ok := r.Current(d.Key)
	if !ok || inc.State != incidents.StateContained || len(inc.Decisions) != 1 || inc.Decisions[0].Unfinished {
		t.Fatalf("incident = %+v", inc)
	}
	n := 0
	for _, rec := range led.Records() {
		if rec.Type == ledger.TypeDecision {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d decision records, want 1", n)
	}
}

func TestResponderStormGuard(t *testing.T) {
	ctx := context.Background()
	var stormed []string
	r := NewResponder(ResponderConfig{
		Decider: shipped(t), Ledger: ledger.NewMemory(), Clock: clock.NewManual(t0),
		Inventory: killswitch.Inventory{"known": inventory["mailer"]},
		Storm:     LocalStorms{incidents.NewStormGuard(incidents.StormSettings{Vendors: 3, Window: time.Minute})},
		OnStorm:   func(_ context.Context, s incidents.Storm) { stormed = append(stormed, strings.Join(s.Vendors, ",")) },
	})
	for i, st := range []struct {
		vendor string
		kind   detectors.Kind
	}{
		// Names without history cannot make a storm: a cap detection of a vendor that
		// is not in the inventory, or a silence, does not count.
		{"x1", detectors.KindCap}, {"x2", detectors.KindSilence}, {"x3", detectors.KindCap}, {"x4", detectors.KindSilence},
		{"a", detectors.KindSpike}, {"known", detectors.KindCap}, {"a", detectors.KindSpike},
		{"c", detectors.KindNewDestination}, // the third counted vendor: a storm
		{"x5", detectors.KindCap},           // still does not count
		{"d", detectors.KindSustained},      // joins
	} {
		d := critical(time.Duration(i)*time.Second, st.kind)
		d.Vendor, d.ID = st.vendor, d.ID+st.vendor+string(st.kind)
		if err := r.Handle(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"a,c,known", "a,c,d,known"}; !slices.Equal(stormed, want) {
		t.Fatalf("storms = %q, want %q", stormed, want)
	}
}

// A vendor whose action hangs holds up nobody else: another vendor's detection is
// handled to the end meanwhile, and an approval's update for the hung vendor does not
// wait for its turn (it is applied when the turn ends).
func TestSlowVendorDoesNotBlockOthers(t *testing.T) {
	ctx := context.Background()
	inv := killswitch.Inventory{"slow": inventory["mailer"], "fast": inventory["mailer"]}
	release := make(chan struct{})
	actor := &recordingActor{at: t0, block: map[string]chan struct{}{"slow": release}}
	store := incidents.NewMemory()
	r := NewResponder(ResponderConfig{Decider: shipped(t), Actor: actor, Ledger: ledger.NewMemory(), Store: store,
		Inventory: inv, Clock: clock.NewManual(t0)})
	detection := func(vendor string) detectors.Detection {
		d := critical(0, detectors.KindCap)
		d.Vendor, d.ID = vendor, d.ID+vendor
		return d
	}
	slowDone := make(chan error, 1)
	go func() { slowDone <- r.Handle(ctx, detection("slow")) }()
	// Wait until the slow vendor is inside its action.
	slowKey := detectors.Key{Vendor: "slow", Credential: "mailer-api"}
	for !waitingInAct(r, "slow") {
		time.Sleep(time.Millisecond)
	}
	if err := r.Handle(ctx, detection("fast")); err != nil {
		t.Fatal(err)
	}
	if got, err := store.Incidents(ctx); err != nil || len(got) != 1 || got[0].Vendor != "fast" || got[0].State != incidents.StateContained {
		t.Fatalf("while the slow vendor hangs, the fast one: %+v, %v", got, err)
	}
	// An approval finishing for the slow vendor now must not wait for its turn.
	updated := make(chan struct{})
	go func() {
		r.ActionUpdate(ctx, actions.Update{Incident: incidents.ID(slowKey, detection("slow").ID), Vendor: "slow", Credential: "mailer-api",
			Ref: incidents.ActionRef{ID: "act-approved", Type: killswitch.ActionNotify, Status: incidents.ActionVerified, At: t0}})
		close(updated)
	}()
	select {
	case <-updated:
	case <-time.After(10 * time.Second):
		t.Fatal("ActionUpdate waited for the slow vendor's turn")
	}
	close(release)
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	in, ok := r.Current(slowKey)
	if !ok || len(in.Actions) < 2 {
		t.Fatalf("slow incident = %+v; want the queued update applied after its turn", in)
	}
	if saved, err := store.Incident(ctx, in.ID); err != nil || len(saved.Actions) != len(in.Actions) {
		t.Fatalf("saved slow incident = %+v, %v", saved, err)
	}
}

// waitingInAct reports whether the vendor's turn is taken (its detection is being
// handled).
func waitingInAct(r *Responder, vendor string) bool {
	v := r.vendor(vendor)
	if v.turn.TryLock() {
		v.turn.Unlock()
		return false
	}
	return true
}

// A new incident that replaces one gone quiet closes it, and the closed state is saved;
// Expire closes and saves quiet incidents too.
func TestClosedIncidentsAreSaved(t *testing.T) {
	ctx := context.Background()
	store := incidents.NewMemory()
	led := ledger.NewMemory()
	r := NewResponder(ResponderConfig{Decider: shipped(t), Ledger: led, Store: store, Inventory: inventory,
		Incidents: incidents.Settings{Cooldown: 10 * time.Minute}, Clock: clock.NewManual(t0)})
	first := critical(0, detectors.KindSpike)
	if err := r.Handle(ctx, first); err != nil {
		t.Fatal(err)
	}
	second := critical(time.Hour, detectors.KindSpike)
	if err := r.Handle(ctx, second); err != nil {
		t.Fatal(err)
	}
	old, err := store.Incident(ctx, incidents.ID(first.Key, first.ID))
	if err != nil || old.State != incidents.StateClosed || old.ClosedAt == nil || !old.ClosedAt.Equal(first.DetectedAt.Add(10*time.Minute)) {
		t.Fatalf("superseded incident as saved: %+v, %v", old, err)
	}
	n, err := r.Expire(ctx, t0.Add(2*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Expire = %d, %v", n, err)
	}
	cur, err := store.Incident(ctx, incidents.ID(second.Key, second.ID))
	if err != nil || cur.State != incidents.StateClosed {
		t.Fatalf("expired incident as saved: %+v, %v", cur, err)
	}
	if _, ok := r.Current(second.Key); ok {
		t.Fatal("an expired incident is still current")
	}
	closedNotes := 0
	for _, rec := range led.Records() {
		if rec.Type == ledger.TypeIncident && strings.HasSuffix(rec.ID, "/closed") {
			closedNotes++
		}
	}
	if closedNotes != 2 {
		t.Fatalf("%d incident-closed records, want 2", closedNotes)
	}
}

// TestResponderEachSilentSensorIsNews: the silences of sensors that stop for every
// vendor share one incident (they have no vendor), but each sensor that goes dark is
// decided and notified on its own; a sensor's silence seen again is not news.
func TestResponderEachSilentSensorIsNews(t *testing.T) {
	ctx := context.Background()
	actor := &recordingActor{at: t0.Add(time.Second)}
	r := NewResponder(ResponderConfig{Decider: shipped(t), Actor: actor, Ledger: ledger.NewMemory(), Inventory: inventory,
		Clock: clock.NewManual(t0.Add(time.Hour))})
	silent := func(sensor string, at time.Duration) detectors.Detection {
		return detectors.Detection{ID: "det-silence-" + sensor + "-" + at.String(), Detector: detectors.KindSilence,
			Severity: detectors.SeverityMedium, Sensor: sensor, FirstAnomalousAt: t0.Add(at - 10*time.Minute), DetectedAt: t0.Add(at),
			Reason: "no telemetry from sensor " + sensor + " (for any vendor)"}
	}
	for _, d := range []detectors.Detection{silent("gw-1", 0), silent("gw-2", 5*time.Minute), silent("gw-1", 20*time.Minute)} {
		if err := r.Handle(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if len(actor.reqs) != 2 {
		t.Fatalf("%d decisions carried out, want 2 (gw-1, then gw-2; gw-1 again is no news)", len(actor.reqs))
	}
	for i, sensor := range []string{"gw-1", "gw-2"} {
		acts := actor.reqs[i].Result.Decision.Actions
		if len(acts) != 1 || acts[0].Type != killswitch.ActionNotify || !strings.Contains(acts[0].Message, "sensor "+sensor+" stopped") {
			t.Fatalf("decision %d = %+v, want a notification about sensor %s", i+1, actor.reqs[i].Result.Decision, sensor)
		}
	}
	inc, ok := r.Current(detectors.Key{})
	if !ok || inc.DetectionCount != 3 || inc.Detections[1].Sensor != "gw-2" {
		t.Fatalf("incident = %+v, want one incident with the three silences", inc)
	}
}
