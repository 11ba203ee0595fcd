package pipeline

import (
	"context"
	"errors"
	"fmt"
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

// fakeVault is the state the fake executors change: which credentials are alive, by
// credential name. The real executors are tested against the real Vault (actions/vault,
// service); this proves the orchestration and its fault paths.
type fakeVault struct {
	mu     sync.Mutex
	alive  map[string]bool
	broken map[string]bool // Apply fails permanently
	clk    *clock.Manual
}

type fakeExec struct{ v *fakeVault }

func (e fakeExec) Plan(_ context.Context, t actions.Target) (actions.Plan, error) {
	e.v.mu.Lock()
	defer e.v.mu.Unlock()
	return actions.Plan{Summary: "take " + t.Credential, Targets: []string{t.Credential}, AlreadyGone: !e.v.alive[t.Credential]}, nil
}

func (e fakeExec) Apply(_ context.Context, t actions.Target) (actions.Outcome, error) {
	e.v.mu.Lock()
	defer e.v.mu.Unlock()
	if e.v.broken[t.Credential] {
		return actions.Outcome{}, killswitch.Permanent(killswitch.ReasonMisconfigured, errors.New("403 permission denied"))
	}
	e.v.clk.Advance(10 * time.Millisecond)
	e.v.alive[t.Credential] = false
	return actions.Outcome{Detail: "gone"}, nil
}

func (e fakeExec) Verify(_ context.Context, t actions.Target) (actions.Verification, error) {
	e.v.mu.Lock()
	defer e.v.mu.Unlock()
	return actions.Verification{Dead: !e.v.alive[t.Credential], Evidence: "lookup: " + t.Credential}, nil
}

type fakeEnum struct {
	extra map[string]killswitch.Credential
}

func (f fakeEnum) Enumerate(context.Context, string, killswitch.Vendor) (map[string]killswitch.Credential, error) {
	return f.extra, nil
}

type fakeReviver struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeReviver) Revive(_ context.Context, _ string, c killswitch.Credential, t killswitch.ActionType, ttl time.Duration) (Revival, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, string(t)+" "+c.Role+c.Entity+c.Path)
	switch t {
	case killswitch.ActionDisableEntity:
		return Revival{Outcome: incidents.RestoreReversed, Evidence: "entity enabled"}, nil
	case killswitch.ActionDestroySecretID, killswitch.ActionRotateKV:
		return Revival{Outcome: incidents.RestoreReissued, Evidence: "new, wrapped", WrapToken: "hvs.wrap-" + c.Role + c.Path,
			WrapAccessor: "wacc", WrapExpiresAt: t0.Add(ttl)}, nil
	}
	return Revival{}, fmt.Errorf("cannot revive %s", t)
}

// holdDecider decides to revoke the detection's credential.
type holdDecider struct{}

func (holdDecider) Evaluate(_ context.Context, in playbooks.Input, _ ...playbooks.EvalOption) playbooks.Result {
	return playbooks.Result{ID: "dec-" + in.Detection.ID, DetectionID: in.Detection.ID, Decision: playbooks.Decision{
		Actions: []playbooks.Action{{Type: killswitch.ActionRevokeTokenAccessor, Credential: in.Detection.Credential}},
		Reason:  "revoke", Severity: "critical",
	}}
}

type killRig struct {
	p      *Pipeline
	k      *Killer
	vault  *fakeVault
	rev    *fakeReviver
	led    *ledger.Memory
	clk    *clock.Manual
	runner *actions.Runner
	store  *incidents.Memory
}

var killInventory = killswitch.Inventory{"mailer": {
	Credentials: map[string]killswitch.Credential{
		"mailer-api":  {Kind: killswitch.CredTokenAccessor, Accessor: "acc-1"},
		"breakglass":  {Kind: killswitch.CredTokenAccessor, Accessor: "acc-bg", Protected: true},
		"mailer-data": {Kind: killswitch.CredKV, Path: "vendors/mailer/data"},
	},
	Vault: killswitch.Holdings{Entity: "mailer", AppRoles: []killswitch.AppRoleRef{{Role: "mailer"}}},
}}

func newKillRig(t *testing.T, s KillSettings) *killRig {
	t.Helper()
	return newKillRigMode(t, s, "")
}

func newKillRigMode(t *testing.T, s KillSettings, mode killswitch.Mode) *killRig {
	t.Helper()
	clk := clock.NewManual(t0)
	v := &fakeVault{alive: map[string]bool{}, broken: map[string]bool{}, clk: clk}
	extra := map[string]killswitch.Credential{
		"approle:mailer:fp:1": {Kind: killswitch.CredAppRoleSecretID, Mount: "approle", Role: "mailer", SecretIDAccessor: "sid-1"},
		"approle:mailer:fp:2": {Kind: killswitch.CredAppRoleSecretID, Mount: "approle", Role: "mailer", SecretIDAccessor: "sid-2"},
		"entity:mailer":       {Kind: killswitch.CredEntity, Entity: "mailer"},
	}
	for _, n := range []string{"mailer-api", "mailer-data", "approle:mailer:fp:1", "approle:mailer:fp:2", "entity:mailer", "breakglass"} {
		v.alive[n] = true
	}
	ex := fakeExec{v}
	led := ledger.NewMemory()
	store := actions.NewMemoryStore()
	runner, err := actions.New(actions.Settings{Mode: mode}, actions.Deps{
		Store: store, Ledger: led, Clock: clk, Sleep: func(context.Context, time.Duration) error { return nil },
		Inventory: killInventory, Fingerprint: actions.NewFingerprinter([]byte("k")),
		Executors: actions.Registry{killswitch.ActionRevokeTokenAccessor: ex, killswitch.ActionRotateKV: ex,
			killswitch.ActionDestroySecretID: ex, killswitch.ActionDisableEntity: ex},
	})
	if err != nil {
		t.Fatal(err)
	}
	rev := &fakeReviver{}
	incs := incidents.NewMemory()
	p, err := New(Config{
		Responder: ResponderConfig{Decider: holdDecider{}, Actor: runner, Ledger: led, Store: incs, Inventory: killInventory},
		Kill:      &KillConfig{Settings: s, Store: store, Runner: runner, Enumerator: fakeEnum{extra}, Reviver: rev, Incidents: incs},
		Clock:     clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &killRig{p: p, k: p.Killer(), vault: v, rev: rev, led: led, clk: clk, runner: runner, store: incs}
}

func (r *killRig) incident(t *testing.T, id string) *incidents.Incident {
	t.Helper()
	in, err := r.store.Incident(context.Background(), id)
	if err != nil || in == nil {
		t.Fatalf("incident %s: %v", id, err)
	}
	return in
}

func TestKillVendorOnePlanOneWindow(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{})
	plan, err := r.k.Plan(ctx, "mailer")
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Steps) != 5 || plan.Enumerated != 3 || len(plan.Protected) != 1 || plan.Protected[0] != "breakglass" {
		t.Fatalf("plan: %d steps, %d enumerated, protected %v; want 5, 3, [breakglass]", len(plan.Steps), plan.Enumerated, plan.Protected)
	}
	for n, alive := range r.vault.alive {
		if !alive {
			t.Fatalf("planning took %s away", n)
		}
	}
	r.clk.Advance(time.Second)
	o, err := r.k.Order(ctx, "mailer", "alice", "vendor breached")
	if err != nil {
		t.Fatal(err)
	}
	if o.State != KillDone || o.ApprovedBy != "alice" || len(o.Actions) != 5 {
		t.Fatalf("order: state %s, approved by %q, %d actions; want done, alice, 5", o.State, o.ApprovedBy, len(o.Actions))
	}
	for n, alive := range r.vault.alive {
		if alive != (n == "breakglass") {
			t.Errorf("%s alive = %v after the kill", n, alive)
		}
	}
	in := r.incident(t, o.Incident)
	if in.Kill == nil || in.State != incidents.StateContained || in.ContainedAt == nil {
		t.Fatalf("incident: kill %v, state %s, contained %v", in.Kill, in.State, in.ContainedAt)
	}
	// One exposure window, ending with the last verification.
	last := in.Actions[0].At
	for _, a := range in.Actions {
		if a.At.After(last) {
			last = a.At
		}
	}
	if !in.ContainedAt.Equal(last) || *in.ExposureWindowSeconds != last.Sub(in.FirstAnomalousAt).Seconds() {
		t.Fatalf("contained at %s, exposure %v s; want the last verification %s", in.ContainedAt, *in.ExposureWindowSeconds, last)
	}
	approvers := 0
	for _, rec := range r.led.Records() {
		if rec.Type == ledger.TypeAction && strings.Contains(string(rec.Payload), `"approver":"alice"`) {
			approvers++
		}
	}
	if approvers == 0 {
		t.Fatal("no action record names the approver")
	}
}

func TestKillVendorSecondApprover(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{SecondApprover: true})
	o, err := r.k.Order(ctx, "mailer", "alice", "breached")
	if err != nil {
		t.Fatal(err)
	}
	if o.State != KillPending || !r.vault.alive["mailer-api"] {
		t.Fatalf("before approval: state %s, mailer-api alive %v", o.State, r.vault.alive["mailer-api"])
	}
	if _, err := r.k.Approve(ctx, o.ID, "alice"); !errors.Is(err, ErrSameApprover) {
		t.Fatalf("self-approval: %v, want ErrSameApprover", err)
	}
	o, err = r.k.Approve(ctx, o.ID, "bob")
	if err != nil || o.State != KillDone || o.ApprovedBy != "bob" {
		t.Fatalf("approved by bob: %v, state %s", err, o.State)
	}
	if _, err := r.k.Approve(ctx, o.ID, "carol"); !errors.Is(err, ErrOrderState) {
		t.Fatalf("second approval of a done order: %v", err)
	}
	in := r.incident(t, o.Incident)
	if in.Kill.RequestedBy != "alice" || in.Kill.ApprovedBy != "bob" {
		t.Fatalf("kill note %+v", in.Kill)
	}
	// A rejected order runs nothing.
	r2 := newKillRig(t, KillSettings{SecondApprover: true})
	o2, _ := r2.k.Order(ctx, "mailer", "alice", "breached?")
	if o2, err = r2.k.Reject(ctx, o2.ID, "bob", "false alarm"); err != nil || o2.State != KillRejected || !r2.vault.alive["mailer-api"] {
		t.Fatalf("reject: %v, state %s", err, o2.State)
	}
}

func TestKillVendorRefusals(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{})
	if _, err := r.k.Order(ctx, "nobody", "alice", "x"); !errors.Is(err, ErrUnknownVendor) {
		t.Fatalf("unknown vendor: %v", err)
	}
	if err := r.runner.Control().Pause(ctx, "carol", "maintenance"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.k.Order(ctx, "mailer", "alice", "x"); !errors.Is(err, ErrPaused) {
		t.Fatalf("paused: %v", err)
	}
}

func TestKillVendorIncompleteThenApprovedAgain(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{})
	r.vault.broken["entity:mailer"] = true
	o, err := r.k.Order(ctx, "mailer", "alice", "breached")
	if err != nil {
		t.Fatal(err)
	}
	in := r.incident(t, o.Incident)
	if o.State != KillIncomplete || in.ContainedAt != nil {
		t.Fatalf("with one action failing: state %s, contained %v; want incomplete, not contained", o.State, in.ContainedAt)
	}
	r.vault.broken["entity:mailer"] = false
	r.clk.Advance(time.Minute)
	if o, err = r.k.Approve(ctx, o.ID, "alice"); err != nil || o.State != KillDone {
		t.Fatalf("approved again: %v, state %s", err, o.State)
	}
	if in = r.incident(t, o.Incident); in.ContainedAt == nil {
		t.Fatal("not contained once every action is verified")
	}
}

func TestRestoreAfterFalsePositive(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{HoldAfterRestore: time.Hour})
	// A detection-driven incident first: its revocation, then the kill joins it.
	d := critical(0, detectors.KindSpike)
	if err := r.p.Responder().Handle(ctx, d); err != nil {
		t.Fatal(err)
	}
	o, err := r.k.Order(ctx, "mailer", "alice", "breached")
	if err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(10 * time.Minute)
	res, err := r.k.Restore(ctx, o.Incident, "bob", "false positive: a migration")
	if err != nil {
		t.Fatal(err)
	}
	byCred := map[string]incidents.RestoreStep{}
	for _, s := range res.Note.Steps {
		byCred[s.Credential] = s
	}
	want := map[string]incidents.RestoreOutcome{
		"mailer-api": incidents.RestoreStaysDead, "entity:mailer": incidents.RestoreReversed,
		"approle:mailer:fp:1": incidents.RestoreReissued, "approle:mailer:fp:2": incidents.RestoreReissued,
		"mailer-data": incidents.RestoreReissued,
	}
	for c, w := range want {
		if byCred[c].Outcome != w {
			t.Errorf("%s: %s, want %s (%s)", c, byCred[c].Outcome, w, byCred[c].Error)
		}
	}
	if len(r.rev.calls) != 3 { // the entity, one secret-id for the role, the KV secret
		t.Errorf("revive calls %v, want 3", r.rev.calls)
	}
	if !res.Note.Complete || res.Note.TimeToRestoreSeconds < 600 || len(res.Wrapped) != 2 {
		t.Fatalf("restore: complete %v, time to restore %.0fs, %d wrapped", res.Note.Complete, res.Note.TimeToRestoreSeconds, len(res.Wrapped))
	}
	in := r.incident(t, o.Incident)
	if !in.FalsePositive || in.Restore == nil {
		t.Fatal("the incident is not marked a false positive")
	}
	for _, rec := range r.led.Records() {
		if strings.Contains(string(rec.Payload), "hvs.wrap") {
			t.Fatalf("a wrapping token reached the ledger: %s", rec.ID)
		}
	}
	if _, err := r.k.Restore(ctx, o.Incident, "bob", "again"); !errors.Is(err, ErrOrderState) {
		t.Fatalf("second restore: %v", err)
	}
	// Restoring the detection-driven incident holds its pattern on its key: the next
	// spike there waits for a human instead of revoking at once.
	cur, ok := r.p.Responder().Current(d.Key)
	if !ok {
		t.Fatal("the spike's incident is gone")
	}
	if _, err := r.k.Restore(ctx, cur.ID, "bob", "false positive"); err != nil {
		t.Fatal(err)
	}
	holds, _ := r.k.Holds(ctx, r.clk.Now())
	if len(holds) != 1 || holds[0].Kind != detectors.KindSpike || holds[0].Key != d.Key {
		t.Fatalf("holds %+v", holds)
	}
	r.vault.alive["mailer-api"] = true // the vendor got a new token
	r.clk.Set(t0.Add(45 * time.Minute))
	if err := r.p.Responder().Handle(ctx, critical(45*time.Minute, detectors.KindSpike)); err != nil {
		t.Fatal(err)
	}
	next, _ := r.p.Responder().Current(d.Key)
	if next.ID == cur.ID || len(next.Actions) != 1 || next.Actions[0].Status != incidents.ActionHeld ||
		!strings.Contains(next.Decisions[0].Reason, "false positive") || !r.vault.alive["mailer-api"] {
		t.Fatalf("the held pattern acted alone: %+v %+v", next.Actions, next.Decisions)
	}
	// Once the hold expires, the pattern acts alone again.
	r.clk.Set(t0.Add(3 * time.Hour))
	if _, ok := r.k.Held(ctx, d.Key, detectors.KindSpike, r.clk.Now()); ok {
		t.Fatal("the hold did not expire")
	}
}

// In shadow mode the whole plan is recorded (each action planned by its executor) and
// nothing is applied.
func TestKillVendorShadow(t *testing.T) {
	ctx := context.Background()
	r := newKillRigMode(t, KillSettings{}, killswitch.ModeShadow)
	o, err := r.k.Order(ctx, "mailer", "alice", "tabletop")
	if err != nil {
		t.Fatal(err)
	}
	if o.State != KillPlanned || len(o.Actions) != 5 || o.Plan.Mode != killswitch.ModeShadow {
		t.Fatalf("shadow kill: state %s, %d actions, plan mode %s", o.State, len(o.Actions), o.Plan.Mode)
	}
	for n, alive := range r.vault.alive {
		if !alive {
			t.Fatalf("shadow took %s away", n)
		}
	}
	for _, a := range o.Actions {
		if a.Status != incidents.ActionPlanned || a.Mode != killswitch.ModeShadow {
			t.Fatalf("shadow action %+v", a)
		}
	}
}

// An order left running by a crashed instance may be approved again once stale.
func TestKillVendorAbandonedRun(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t, KillSettings{SecondApprover: true})
	o, err := r.k.Order(ctx, "mailer", "alice", "breached")
	if err != nil {
		t.Fatal(err)
	}
	o.State, o.ApprovedAt = KillRunning, r.clk.Now()
	if err := r.k.save(ctx, o); err != nil {
		t.Fatal(err)
	}
	if _, err := r.k.Approve(ctx, o.ID, "bob"); !errors.Is(err, ErrOrderState) {
		t.Fatalf("approving a running order: %v", err)
	}
	r.clk.Advance(staleRun + time.Second)
	if o, err = r.k.Approve(ctx, o.ID, "bob"); err != nil || o.State != KillDone {
		t.Fatalf("approving an abandoned run: %v, state %s", err, o.State)
	}
}
