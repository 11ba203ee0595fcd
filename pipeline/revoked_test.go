package pipeline

import (
	"context"
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
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// nowActor verifies every destructive action at once, at the clock's time, and
// records the decisions it was asked to carry out.
type nowActor struct {
	clk  clock.Clock
	mu   sync.Mutex
	reqs []actions.Request
}

func (a *nowActor) Act(_ context.Context, req actions.Request) ([]incidents.ActionRef, error) {
	a.mu.Lock()
	a.reqs = append(a.reqs, req)
	a.mu.Unlock()
	var out []incidents.ActionRef
	for _, act := range req.Result.Decision.Actions {
		st := incidents.ActionVerified
		if !act.Type.Destructive() {
			st = incidents.ActionApplied
		}
		out = append(out, incidents.ActionRef{ID: req.Incident.ID + "/" + string(act.Type) + "/" + act.Credential,
			Type: act.Type, Credential: act.Credential, Status: st, At: a.clk.Now()})
	}
	return out, nil
}

func (a *nowActor) Budget(context.Context) playbooks.Budget {
	return playbooks.Budget{Remaining: 10, Limit: 10, Window: "1h0m0s"}
}

type pages struct {
	mu  sync.Mutex
	got []map[string]any
}

func (p *pages) Page(_ context.Context, _ string, v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, v.(map[string]any))
	return nil
}

func (p *pages) count(kind detectors.Kind) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, g := range p.got {
		if g["kind"] == kind {
			n++
		}
	}
	return n
}

var uarInventory = killswitch.Inventory{"mailer": {
	Caps: []killswitch.Cap{{Credential: "mailer-api", Bytes: 1_000_000, Per: time.Hour}},
	Credentials: map[string]killswitch.Credential{
		"mailer-api":  {Kind: killswitch.CredTokenAccessor, Accessor: "acc-1"},
		"mailer-smtp": {Kind: killswitch.CredTokenAccessor, Accessor: "acc-2"},
	},
}}

type uarRig struct {
	p     *Pipeline
	clk   *clock.Manual
	actor *nowActor
	pages *pages
	store *incidents.Memory
	m     *metrics.Metrics
}

func newUARRig(t *testing.T, watch time.Duration) *uarRig {
	t.Helper()
	clk := clock.NewManual(time.Time{})
	rig := &uarRig{clk: clk, actor: &nowActor{clk: clk}, pages: &pages{}, store: incidents.NewMemory(), m: metrics.New()}
	p, err := New(Config{
		Detectors: detectors.Config{Vendors: uarInventory},
		Inline:    true,
		Responder: ResponderConfig{Decider: shipped(t), Actor: rig.actor, Ledger: ledger.NewMemory(), Store: rig.store,
			Inventory: uarInventory, Pager: rig.pages, WatchRevoked: watch, Metrics: rig.m},
		Virtual: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	rig.p = p
	return rig
}

func (r *uarRig) send(t *testing.T, evs ...telemetry.Event) {
	t.Helper()
	for _, ev := range evs {
		r.clk.Set(ev.Time)
		if err := r.p.Ingest().Handle(context.Background(), []telemetry.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
}

func uarEvent(at time.Time, cred string, bytes int64) telemetry.Event {
	return telemetry.Event{Time: at, Vendor: "mailer", Credential: cred, Dst: "203.0.113.7", DstPort: 443, Bytes: bytes, Sensor: "gw"}
}

func kinds(in *incidents.Incident) []detectors.Kind { return in.Detectors }

// A cap breach is revoked; traffic that goes on on the revoked credential at a
// normal volume is a critical use_after_revocation detection of the same incident:
// the playbooks escalate it (notify, critical, nothing destructive), a human is paged,
// it is counted, and a flood makes one detection per bucket.
func TestUseAfterRevocationEndToEnd(t *testing.T) {
	ctx := context.Background()
	rig := newUARRig(t, 0)
	key := detectors.Key{Vendor: "mailer", Credential: "mailer-api"}
	rig.send(t, uarEvent(t0, "mailer-api", 900_000), uarEvent(t0.Add(time.Second), "mailer-api", 1_200_000)) // the cap is crossed
	inc, ok := rig.p.Responder().Current(key)
	if !ok || inc.State != incidents.StateContained {
		t.Fatalf("after the breach: %+v", inc)
	}
	if n := len(rig.actor.reqs); n != 1 {
		t.Fatalf("%d decisions acted on, want 1", n)
	}
	// Another credential of the vendor is not revoked: its traffic is nothing.
	rig.send(t, uarEvent(t0.Add(2*time.Second), "mailer-smtp", 10))
	// One byte on the revoked credential, then a flood for 20 minutes (4 buckets of 5m).
	rig.send(t, uarEvent(t0.Add(3*time.Second), "mailer-api", 1))
	for i := range 1200 {
		rig.send(t, uarEvent(t0.Add(4*time.Second+time.Duration(i)*time.Second), "mailer-api", 100))
	}
	inc, _ = rig.p.Responder().Current(key)
	if !slices.Contains(kinds(inc), detectors.KindUseAfterRevocation) || inc.State != incidents.StateContained {
		t.Fatalf("incident detectors %v, state %s", inc.Detectors, inc.State)
	}
	var uar []incidents.DetectionRef
	for _, d := range inc.Detections {
		if d.Detector == detectors.KindUseAfterRevocation {
			uar = append(uar, d)
		}
	}
	if len(uar) != 5 { // the bucket of the revocation, then 4 more over 20 minutes
		t.Fatalf("%d use_after_revocation detections, want 5 (one per 5m bucket)", len(uar))
	}
	if uar[0].Severity != detectors.SeverityCritical || uar[0].Observed != 1 || !strings.Contains(uar[0].Reason, inc.ID) {
		t.Errorf("first detection: %+v", uar[0])
	}
	// Each was decided on: notify, critical, and nothing destructive proposed again.
	n := 0
	for _, req := range rig.actor.reqs[1:] {
		if req.Detection.Detector != detectors.KindUseAfterRevocation {
			t.Errorf("decision for %s", req.Detection.Detector)
			continue
		}
		n++
		d := req.Result.Decision
		if d.Severity != "critical" || !d.RequiresApproval || slices.ContainsFunc(d.Actions, destructive) || len(d.Actions) != 1 || d.Actions[0].Type != killswitch.ActionNotify {
			t.Errorf("decision on use after revocation: %+v", d)
		}
	}
	if n != 5 {
		t.Errorf("%d decisions on use after revocation, want 5", n)
	}
	if got := rig.pages.count(detectors.KindUseAfterRevocation); got != 5 {
		t.Errorf("%d pages, want 5", got)
	}
	if got := counterValue(t, rig.m.UseAfterRevocation); got != 5 {
		t.Errorf("killswitch_use_after_revocation_total = %v, want 5", got)
	}
	// Every byte up to the last detection's event; what moved after it in its bucket is
	// reported by the next one.
	if got, want := counterValue(t, rig.m.UseAfterRevocationBytes), float64(uar[len(uar)-1].Observed); got != want {
		t.Errorf("killswitch_use_after_revocation_bytes_total = %v, want %v (the last detection's bytes since the revocation)", got, want)
	}
	if err := rig.p.Tick(ctx, t0.Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// The revoked credential stays watched after its incident closed (for WatchRevoked):
// traffic after a quiet period opens a new incident that is escalated. A restore after
// a false positive ends the watch.
func TestUseAfterRevocationAfterClose(t *testing.T) {
	ctx := context.Background()
	rig := newUARRig(t, 2*time.Hour)
	key := detectors.Key{Vendor: "mailer", Credential: "mailer-api"}
	rig.send(t, uarEvent(t0, "mailer-api", 900_000), uarEvent(t0.Add(time.Second), "mailer-api", 1_200_000))
	first, _ := rig.p.Responder().Current(key)
	// Quiet for an hour (the incident closes after its 30m cooldown); the vendor's other
	// credential keeps the clock moving.
	for i := range 60 {
		at := t0.Add(time.Duration(i+1) * time.Minute)
		rig.send(t, uarEvent(at, "mailer-smtp", 10))
		if err := rig.p.Tick(ctx, at); err != nil {
			t.Fatal(err)
		}
	}
	stored, err := rig.store.Incident(ctx, first.ID)
	if err != nil || stored.State != incidents.StateClosed {
		t.Fatalf("first incident: %+v, %v", stored, err)
	}
	rig.send(t, uarEvent(t0.Add(61*time.Minute), "mailer-api", 5))
	second, ok := rig.p.Responder().Current(key)
	if !ok || second.ID == first.ID || !slices.Contains(kinds(second), detectors.KindUseAfterRevocation) {
		t.Fatalf("after the quiet hour: %+v", second)
	}
	if rig.pages.count(detectors.KindUseAfterRevocation) != 1 {
		t.Errorf("pages: %v", rig.pages.got)
	}
	// The first incident is restored (false positive): no more watching.
	stored.Restore = &incidents.RestoreNote{By: "alice", Complete: true}
	stored.FalsePositive = true
	rig.p.Responder().Restore(stored)
	if revs := rig.p.Responder().Revocations().Revoked("mailer"); len(revs) != 0 {
		t.Errorf("still watched after the restore: %+v", revs)
	}
	// Past the watch: gone (closed at +30m01s, watched for 2h).
	rig2 := newUARRig(t, 2*time.Hour)
	rig2.send(t, uarEvent(t0, "mailer-api", 900_000), uarEvent(t0.Add(time.Second), "mailer-api", 1_200_000))
	tick := func(until time.Duration) {
		for at := rig2.clk.Now().Truncate(time.Minute).Add(time.Minute); !at.After(t0.Add(until)); at = at.Add(time.Minute) {
			rig2.send(t, uarEvent(at, "mailer-smtp", 1))
			if err := rig2.p.Tick(ctx, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	tick(time.Hour)
	if revs := rig2.p.Responder().Revocations().Revoked("mailer"); len(revs) != 1 {
		t.Fatalf("closed within the watch: %+v", revs)
	}
	tick(3 * time.Hour)
	if revs := rig2.p.Responder().Revocations().Revoked("mailer"); len(revs) != 0 {
		t.Errorf("watched past WatchRevoked: %+v", revs)
	}
}

// In a cluster the vendor's new owner reloads its incidents (contained, and closed
// within the watch) and watches them; the owner it moved away from forgets them.
func TestRevokedFollowsReloadAndForget(t *testing.T) {
	clk := clock.NewManual(t0.Add(time.Hour))
	r := NewResponder(ResponderConfig{Decider: shipped(t), Ledger: ledger.NewMemory(), Clock: clk})
	contained := t0.Add(time.Second)
	closedAt := t0.Add(40 * time.Minute)
	ins := []*incidents.Incident{
		{ID: "inc-a", Vendor: "mailer", Credential: "mailer-api", State: incidents.StateContained, ContainedAt: &contained, LastDetectionAt: t0},
		{ID: "inc-v", Vendor: "mailer", State: incidents.StateClosed, ContainedAt: &contained, ClosedAt: &closedAt, LastDetectionAt: t0},
		{ID: "inc-old", Vendor: "mailer", Credential: "mailer-smtp", State: incidents.StateClosed, ContainedAt: &contained,
			ClosedAt: ptr(t0.Add(-30 * 24 * time.Hour)), LastDetectionAt: t0},
		{ID: "inc-open", Vendor: "mailer", Credential: "other", State: incidents.StateOpen, LastDetectionAt: t0},
	}
	v0 := r.Revocations().Version()
	r.Reload("mailer", ins)
	revs := r.Revocations().Revoked("mailer")
	if r.Revocations().Version() == v0 || len(revs) != 2 || revs[0].Incident != "inc-v" || revs[0].Credential != "" || revs[1].Incident != "inc-a" {
		t.Fatalf("after reload: %+v", revs)
	}
	v1 := r.Revocations().Version()
	r.Forget(func(string) bool { return false })
	if r.Revocations().Version() == v1 || len(r.Revocations().Revoked("mailer")) != 0 {
		t.Fatalf("after forget: %+v", r.Revocations().Revoked("mailer"))
	}
}

func ptr[T any](v T) *T { return &v }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
