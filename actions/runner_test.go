package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

// countingExec is a hand-written executor for the guard rails' own tests: it counts
// calls and fails on demand. The Vault executors are tested against a real Vault in
// actions/vault and end to end in integration_test.go.
type countingExec struct {
	mu       sync.Mutex
	applies  map[string]int
	dead     map[string]bool
	failures []error // returned by the next Apply calls, in order
	slow     time.Duration
}

func newCounting() *countingExec {
	return &countingExec{applies: map[string]int{}, dead: map[string]bool{}}
}

func (c *countingExec) Plan(_ context.Context, t Target) (Plan, error) {
	return Plan{Summary: "revoke " + t.Credential, Targets: []string{t.Credential}}, nil
}

func (c *countingExec) Apply(ctx context.Context, t Target) (Outcome, error) {
	if c.slow > 0 {
		select {
		case <-time.After(c.slow):
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.failures) > 0 {
		err := c.failures[0]
		c.failures = c.failures[1:]
		return Outcome{}, err
	}
	c.applies[t.Credential]++
	if c.dead[t.Credential] {
		return Outcome{AlreadyDone: true}, nil
	}
	c.dead[t.Credential] = true
	return Outcome{Detail: "revoked"}, nil
}

func (c *countingExec) Verify(_ context.Context, t Target) (Verification, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Verification{Dead: c.dead[t.Credential], Evidence: "lookup"}, nil
}

func (c *countingExec) count(cred string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applies[cred]
}

func inventory(n int) killswitch.Inventory {
	inv := killswitch.Inventory{}
	for v := range n {
		creds := map[string]killswitch.Credential{
			"api":        {Kind: killswitch.CredTokenAccessor, Accessor: fmt.Sprintf("acc-%d", v)},
			"breakglass": {Kind: killswitch.CredTokenAccessor, Accessor: fmt.Sprintf("bg-%d", v), Protected: true},
			"db":         {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/v"},
		}
		inv[fmt.Sprintf("v%02d", v)] = killswitch.Vendor{Credentials: creds}
	}
	return inv
}

type rig struct {
	runner *Runner
	exec   *countingExec
	led    *ledger.Memory
	clk    *clock.Manual
	store  Store
	inv    killswitch.Inventory
}

func newRig(t *testing.T, cfg Settings, store Store, instance string) *rig {
	t.Helper()
	if store == nil {
		store = NewMemoryStore()
	}
	r := &rig{exec: newCounting(), led: ledger.NewMemory(), clk: clock.NewManual(t0), store: store, inv: inventory(30)}
	var err error
	r.runner, err = New(cfg, Deps{
		Store: store, Ledger: r.led, Inventory: r.inv, Clock: r.clk, Instance: instance,
		Sleep:     func(context.Context, time.Duration) error { return nil },
		Executors: Registry{killswitch.ActionRevokeTokenAccessor: r.exec, killswitch.ActionRevokeLeasePrefix: r.exec, killswitch.ActionNotify: r.exec},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) request(vendor, incident string, approval bool, acts ...playbooks.Action) Request {
	v := r.inv[vendor]
	for i := range acts {
		if acts[i].Mode == "" {
			acts[i].Mode = killswitch.ModeEnforce
		}
	}
	return Request{
		Incident: &incidents.Incident{ID: incident, Vendor: vendor, Credential: "api"},
		Result:   playbooks.Result{ID: "dec-" + incident, Decision: playbooks.Decision{Actions: acts, RequiresApproval: approval, Reason: "test"}},
		Vendor:   &v,
	}
}

var revokeAPI = playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api"}

func (r *rig) stages(t *testing.T) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, rec := range r.led.Records() {
		var ev Event
		if rec.Type != ledger.TypeAction {
			continue
		}
		if err := json.Unmarshal(rec.Payload, &ev); err != nil {
			t.Fatal(err)
		}
		n[ev.Stage]++
	}
	return n
}

func TestBudgetOpensBreaker(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{Budget: 3}, nil, "a")
	counts := map[incidents.ActionStatus]int{}
	for i := range 20 {
		refs, err := r.runner.Act(ctx, r.request(fmt.Sprintf("v%02d", i), fmt.Sprintf("inc-%d", i), false, revokeAPI))
		if err != nil {
			t.Fatal(err)
		}
		counts[refs[0].Status]++
	}
	if counts[incidents.ActionVerified] != 3 || counts[incidents.ActionHeld] != 17 {
		t.Fatalf("statuses %v, want 3 verified and 17 held", counts)
	}
	st, _ := r.runner.Control().Status(ctx)
	if !st.Breaker.On {
		t.Fatal("breaker not open")
	}
	if b := r.runner.Budget(ctx); b.Remaining != 0 || !b.BreakerOpen {
		t.Fatalf("budget %+v", b)
	}
	s := r.stages(t)
	if s["held"] != 17 || s["verified"] != 3 || s["intent"] != 3 {
		t.Fatalf("recorded stages %v", s)
	}
	held, _ := r.runner.Approvals().List(ctx)
	if len(held) != 17 {
		t.Fatalf("%d held records, want 17", len(held))
	}
	// Resetting the breaker lets the next decision through; the budget is still spent
	// in this window, so it opens again.
	if err := r.runner.Control().ResetBreaker(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	refs, _ := r.runner.Act(ctx, r.request("v25", "inc-25", false, revokeAPI))
	if refs[0].Status != incidents.ActionHeld {
		t.Fatalf("after reset in the same window: %s", refs[0].Status)
	}
	r.clk.Advance(time.Hour)
	_ = r.runner.Control().ResetBreaker(ctx, "ana")
	refs, _ = r.runner.Act(ctx, r.request("v26", "inc-26", false, revokeAPI))
	if refs[0].Status != incidents.ActionVerified {
		t.Fatalf("next window: %s", refs[0].Status)
	}
}

func TestProtectedAndUnknownCredentialsAreNeverTouched(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false,
		playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "breakglass"},
		playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "nope"},
		playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "db"}, // wrong kind
	))
	if err != nil {
		t.Fatal(err)
	}
	want := []incidents.ActionStatus{incidents.ActionSkipped, incidents.ActionFailed, incidents.ActionFailed}
	for i, ref := range refs {
		if ref.Status != want[i] {
			t.Errorf("action %d: %s (%s), want %s", i, ref.Status, ref.Detail, want[i])
		}
	}
	if n := r.exec.count("breakglass") + r.exec.count("nope") + r.exec.count("db"); n != 0 {
		t.Fatalf("executor called %d times", n)
	}
}

func TestSameActionTwiceRevokesOnce(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	req := r.request("v01", "inc-1", false, revokeAPI)
	for range 3 {
		refs, err := r.runner.Act(ctx, req)
		if err != nil || refs[0].Status != incidents.ActionVerified {
			t.Fatalf("%+v, %v", refs, err)
		}
	}
	if n := r.exec.count("api"); n != 1 {
		t.Fatalf("applied %d times, want once", n)
	}
	if b := r.runner.Budget(ctx); b.Remaining != b.Limit-1 {
		t.Fatalf("a redelivery consumed budget: %+v", b)
	}
}

// A crash between the claim and the apply leaves a claim nobody finishes; after the
// restart it is reconciled through Verify and applied exactly once.
func TestCrashBetweenClaimAndApply(t *testing.T) {
	ctx := context.Background()
	for _, alreadyDead := range []bool{false, true} {
		r := newRig(t, Settings{ClaimStale: 30 * time.Second}, nil, "after-restart")
		req := r.request("v01", "inc-1", false, revokeAPI)
		id := ActionID("inc-1", revokeAPI)
		b, _ := json.Marshal(Claim{State: ClaimClaimed, Instance: "crashed", At: t0})
		if _, err := r.store.Create(ctx, ClaimsBucket, id, b); err != nil {
			t.Fatal(err)
		}
		r.exec.dead["api"] = alreadyDead // the crash came after the apply reached Vault
		r.clk.Advance(31 * time.Second)
		refs, err := r.runner.Act(ctx, req)
		if err != nil || refs[0].Status != incidents.ActionVerified {
			t.Fatalf("dead=%v: %+v, %v", alreadyDead, refs, err)
		}
		want := 1
		if alreadyDead {
			want = 0
		}
		if n := r.exec.count("api"); n != want {
			t.Fatalf("dead=%v: applied %d times, want %d", alreadyDead, n, want)
		}
		if _, err := r.runner.Act(ctx, req); err != nil || r.exec.count("api") != want {
			t.Fatalf("a second delivery applied again")
		}
	}
}

func TestRetries(t *testing.T) {
	ctx := context.Background()
	t.Run("retryable then success", func(t *testing.T) {
		r := newRig(t, Settings{}, nil, "a")
		r.exec.failures = []error{killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("503")), killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("429"))}
		refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
		if err != nil || refs[0].Status != incidents.ActionVerified {
			t.Fatalf("%+v, %v", refs, err)
		}
		if s := r.stages(t); s["apply-attempt-1"] != 1 || s["apply-attempt-2"] != 1 || s["verified"] != 1 {
			t.Fatalf("stages %v", s)
		}
	})
	t.Run("permanent: one attempt, no retry storm", func(t *testing.T) {
		r := newRig(t, Settings{}, nil, "a")
		r.exec.failures = []error{killswitch.Permanent(killswitch.ReasonDenied, errors.New("403 permission denied")), nil}
		refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
		if err != nil || refs[0].Status != incidents.ActionFailed {
			t.Fatalf("%+v, %v", refs, err)
		}
		if s := r.stages(t); s["apply-attempt-1"] != 1 || s["apply-attempt-2"] != 0 || s["failed"] != 1 {
			t.Fatalf("stages %v", s)
		}
	})
	t.Run("retryable until exhausted: handled again later", func(t *testing.T) {
		r := newRig(t, Settings{Attempts: 3}, nil, "a")
		r.exec.failures = []error{killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("a")), killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("b")), killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("c"))}
		refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
		if !killswitch.IsRetryable(err) || refs[0].Status != incidents.ActionFailed {
			t.Fatalf("%+v, %v", refs, err)
		}
		// the redelivery succeeds, once
		refs, err = r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
		if err != nil || refs[0].Status != incidents.ActionVerified || r.exec.count("api") != 1 {
			t.Fatalf("redelivery: %+v, %v", refs, err)
		}
	})
	t.Run("call deadline", func(t *testing.T) {
		r := newRig(t, Settings{Attempts: 2, CallTimeout: 20 * time.Millisecond}, nil, "a")
		r.exec.slow = time.Second
		refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
		if !killswitch.IsRetryable(err) || refs[0].Status != incidents.ActionFailed {
			t.Fatalf("%+v, %v", refs, err)
		}
	})
}

func TestApprovals(t *testing.T) {
	ctx := context.Background()
	var updates []Update
	r := newRig(t, Settings{ApprovalTTL: time.Hour}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI, playbooks.Action{Type: killswitch.ActionNotify, Message: "hi"}))
	if refs[0].Status != incidents.ActionHeld || refs[1].Status != incidents.ActionVerified {
		t.Fatalf("with approval required: %+v", refs)
	}
	if _, err := r.runner.Approvals().Approve(ctx, "act-unknown", "ana", ""); !errors.Is(err, ErrUnknownAction) {
		t.Fatalf("approve unknown: %v", err)
	}
	u, err := r.runner.Approvals().Approve(ctx, refs[0].ID, "ana", "confirmed with the vendor")
	if err != nil || u.Ref.Status != incidents.ActionVerified || u.Incident != "inc-1" || u.Vendor != "v01" || r.exec.count("api") != 1 {
		t.Fatalf("approve: %+v, %v", u, err)
	}
	updates = append(updates, u)
	if _, err := r.runner.Approvals().Approve(ctx, refs[0].ID, "bob", ""); !errors.Is(err, ErrDecided) || r.exec.count("api") != 1 {
		t.Fatalf("second approve: %v", err)
	}
	// A redelivery of the original decision does not run it again either.
	if again, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI)); again[0].Status != incidents.ActionVerified || r.exec.count("api") != 1 {
		t.Fatalf("redelivery after approval: %+v", again)
	}
	// An expired approval runs nothing.
	refs, _ = r.runner.Act(ctx, r.request("v02", "inc-2", true, revokeAPI))
	r.clk.Advance(2 * time.Hour)
	u, err = r.runner.Approvals().Approve(ctx, refs[0].ID, "ana", "")
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("approve expired: %v", err)
	}
	updates = append(updates, u)
	if r.exec.count("api") != 1 {
		t.Fatal("an expired approval ran")
	}
	// Reject, and the sweeper.
	refs, _ = r.runner.Act(ctx, r.request("v03", "inc-3", true, revokeAPI))
	u, err = r.runner.Approvals().Reject(ctx, refs[0].ID, "ana", "false positive")
	if err != nil {
		t.Fatal(err)
	}
	updates = append(updates, u)
	if _, err := r.runner.Act(ctx, r.request("v04", "inc-4", true, revokeAPI)); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(2 * time.Hour)
	expired, err := r.runner.Approvals().Expire(ctx)
	if err != nil || len(expired) != 1 {
		t.Fatalf("Expire = %+v, %v", expired, err)
	}
	updates = append(updates, expired...)
	got := map[incidents.ActionStatus]int{}
	for _, u := range updates {
		got[u.Ref.Status]++
	}
	if got[incidents.ActionVerified] != 1 || got[incidents.ActionExpired] != 2 || got[incidents.ActionRejected] != 1 {
		t.Fatalf("incident updates %v", got)
	}
}

func TestPauseHoldsDestructiveActions(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	if err := r.runner.Control().Pause(ctx, "ana", "drill"); err != nil {
		t.Fatal(err)
	}
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI, playbooks.Action{Type: killswitch.ActionNotify}))
	if refs[0].Status != incidents.ActionHeld || refs[1].Status != incidents.ActionVerified {
		t.Fatalf("paused: %+v", refs)
	}
	if err := r.runner.Control().Resume(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	refs, _ = r.runner.Act(ctx, r.request("v02", "inc-2", false, revokeAPI))
	if refs[0].Status != incidents.ActionVerified {
		t.Fatalf("resumed: %+v", refs)
	}
}

type failingLedger struct{}

func (failingLedger) Append(context.Context, ledger.Entry) (ledger.Record, error) {
	return ledger.Record{}, ledger.ErrUnavailable
}

func TestNoLedgerNoApply(t *testing.T) {
	r := newRig(t, Settings{}, nil, "a")
	r.runner.d.Ledger = failingLedger{}
	_, err := r.runner.Act(context.Background(), r.request("v01", "inc-1", false, revokeAPI))
	if !errors.Is(err, ledger.ErrUnavailable) || r.exec.count("api") != 0 {
		t.Fatalf("err %v, applied %d", err, r.exec.count("api"))
	}
}

func TestModes(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		global, vendor killswitch.Mode
		action         killswitch.Mode
		want           incidents.ActionStatus
		applied        int
	}{
		{"enforce", "", killswitch.ModeEnforce, incidents.ActionVerified, 1},
		{"shadow", "", killswitch.ModeEnforce, incidents.ActionPlanned, 0},
		{"enforce", "dry-run", killswitch.ModeEnforce, incidents.ActionPlanned, 0},
		{"enforce", "", killswitch.ModeShadow, incidents.ActionPlanned, 0},
	}
	for _, tt := range tests {
		r := newRig(t, Settings{Mode: tt.global}, nil, "a")
		v := r.inv["v01"]
		v.Mode = tt.vendor
		r.inv["v01"] = v
		a := revokeAPI
		a.Mode = tt.action
		refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, a))
		if err != nil || refs[0].Status != tt.want || r.exec.count("api") != tt.applied {
			t.Errorf("%+v: %+v, %v, applied %d", tt, refs, err, r.exec.count("api"))
		}
	}
}

func TestCooldown(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{Cooldown: 10 * time.Minute}, nil, "a")
	if refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI)); refs[0].Status != incidents.ActionVerified {
		t.Fatal(refs)
	}
	r.clk.Advance(time.Minute)
	if refs, _ := r.runner.Act(ctx, r.request("v01", "inc-2", false, revokeAPI)); refs[0].Status != incidents.ActionHeld {
		t.Fatalf("within cooldown: %+v", refs)
	}
	r.clk.Advance(10 * time.Minute)
	if refs, _ := r.runner.Act(ctx, r.request("v01", "inc-3", false, revokeAPI)); refs[0].Status != incidents.ActionVerified {
		t.Fatalf("after cooldown: %+v", refs)
	}
}

func TestPlanOnly(t *testing.T) {
	ctx := context.Background()
	led := ledger.NewMemory()
	r, err := New(Settings{Budget: 1, PlanOnly: true}, Deps{Store: NewMemoryStore(), Ledger: led, Clock: clock.NewManual(t0)})
	if err != nil {
		t.Fatal(err)
	}
	rg := &rig{inv: inventory(3)}
	refs, _ := r.Act(ctx, rg.request("v01", "inc-1", false, revokeAPI, playbooks.Action{Type: killswitch.ActionNotify}))
	if refs[0].Status != incidents.ActionPlanned || refs[1].Status != incidents.ActionPlanned {
		t.Fatalf("%+v", refs)
	}
	// the budget still applies in a plan
	if refs, _ := r.Act(ctx, rg.request("v02", "inc-2", false, revokeAPI)); refs[0].Status != incidents.ActionHeld {
		t.Fatalf("%+v", refs)
	}
}

// A hold is superseded by a later decision of the same incident that needs no approval;
// an approval after that finds nothing pending.
func TestLaterDecisionSupersedesHold(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI))
	if refs[0].Status != incidents.ActionHeld {
		t.Fatalf("%+v", refs)
	}
	refs, err := r.runner.Act(ctx, r.request("v01", "inc-1", false, revokeAPI))
	if err != nil || refs[0].Status != incidents.ActionVerified || r.exec.count("api") != 1 {
		t.Fatalf("escalated decision: %+v, %v", refs, err)
	}
	if _, err := r.runner.Approvals().Approve(ctx, refs[0].ID, "ana", ""); !errors.Is(err, ErrDecided) || r.exec.count("api") != 1 {
		t.Fatalf("approve after supersede: %v", err)
	}
}

// hookStore runs after once, right after a claim is taken (created, or taken over):
// between the claim and Apply.
type hookStore struct {
	Store
	once  sync.Once
	after func()
}

func (h *hookStore) claimed(bucket string, val []byte, err error) {
	if err == nil && bucket == ClaimsBucket && h.after != nil && strings.Contains(string(val), `"state":"claimed"`) {
		h.once.Do(h.after)
	}
}

func (h *hookStore) Create(ctx context.Context, bucket, key string, val []byte) (uint64, error) {
	rev, err := h.Store.Create(ctx, bucket, key, val)
	h.claimed(bucket, val, err)
	return rev, err
}

func (h *hookStore) Update(ctx context.Context, bucket, key string, val []byte, rev uint64) (uint64, error) {
	nrev, err := h.Store.Update(ctx, bucket, key, val, rev)
	h.claimed(bucket, val, err)
	return nrev, err
}

func (r *rig) claimOf(t *testing.T, id string) Claim {
	t.Helper()
	var c Claim
	if _, ok, err := getJSON(context.Background(), r.store, ClaimsBucket, id, &c); err != nil || !ok {
		t.Fatalf("claim of %s: %v (found %v)", id, err, ok)
	}
	return c
}

func (r *rig) heldOf(t *testing.T, id string) Held {
	t.Helper()
	h, _, ok, err := r.runner.Approvals().get(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("held action %s: %v (found %v)", id, err, ok)
	}
	return h
}

var errUnavailable = killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("vault: 503 service unavailable"))

// The pause switch and the breaker are checked again immediately before Apply, for a
// fresh claim, a redelivered one (a claim left failed), and one taken over: the action
// is held (recorded, held for approval, its budget units given back, its claim held),
// never applied and never dropped; after the resume it runs once, approved or
// superseded by a decision the guards let through.
func TestHoldImmediatelyBeforeApply(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// failFirst: a first delivery fails retryably, leaving its claim failed.
		failFirst bool
		// before runs before the (re)delivery; between runs between its claim and Apply.
		before, between func(c *Control) error
		guard           string
	}{
		{name: "fresh claim, paused between the claim and Apply", guard: "paused",
			between: func(c *Control) error { return c.Pause(ctx, "ana", "drill") }},
		{name: "redelivered claim, paused before the redelivery", guard: "paused", failFirst: true,
			before: func(c *Control) error { return c.Pause(ctx, "ana", "drill") }},
		{name: "redelivered claim, paused between the takeover and Apply", guard: "paused", failFirst: true,
			between: func(c *Control) error { return c.Pause(ctx, "ana", "drill") }},
		{name: "fresh claim, breaker opened between the claim and Apply", guard: "breaker",
			between: func(c *Control) error { return c.openBreaker(ctx, "another instance spent the budget") }},
		{name: "redelivered claim, breaker open before the redelivery", guard: "breaker", failFirst: true,
			before: func(c *Control) error { return c.openBreaker(ctx, "spent") }},
	}
	for _, tt := range tests {
		for _, then := range []string{"approve", "redeliver"} {
			t.Run(tt.name+", then "+then, func(t *testing.T) {
				hook := &hookStore{Store: NewMemoryStore()}
				r := newRig(t, Settings{Attempts: 2}, hook, "a")
				c := r.runner.Control()
				req := r.request("v01", "inc-1", false, revokeAPI)
				id := ActionID("inc-1", revokeAPI)
				if tt.failFirst {
					r.exec.failures = []error{errUnavailable, errUnavailable}
					if refs, err := r.runner.Act(ctx, req); !killswitch.IsRetryable(err) || refs[0].Status != incidents.ActionFailed {
						t.Fatalf("first delivery: %+v, %v", refs, err)
					}
				}
				if tt.before != nil {
					if err := tt.before(c); err != nil {
						t.Fatal(err)
					}
				}
				if tt.between != nil {
					hook.once = sync.Once{}
					hook.after = func() {
						if err := tt.between(c); err != nil {
							t.Error(err)
						}
					}
				}
				refs, err := r.runner.Act(ctx, req)
				if err != nil || refs[0].Status != incidents.ActionHeld || r.exec.count("api") != 0 {
					t.Fatalf("held: %+v, %v, applied %d", refs, err, r.exec.count("api"))
				}
				if h := r.heldOf(t, id); h.State != HoldPending || h.Guard != tt.guard {
					t.Fatalf("held record %+v, want pending by %s", h, tt.guard)
				}
				if cl := r.claimOf(t, id); cl.State != ClaimHeld {
					t.Fatalf("claim %+v, want held", cl)
				}
				if s := r.stages(t); s["held-before-apply"] != 1 {
					t.Fatalf("stages %v: the hold is not recorded", s)
				}
				if b := r.runner.Budget(ctx); b.Remaining != b.Limit {
					t.Fatalf("budget %+v: the held action's unit was not given back", b)
				}
				// Still paused: a redelivery holds it again, and applies nothing.
				if refs, err := r.runner.Act(ctx, req); err != nil || refs[0].Status != incidents.ActionHeld || r.exec.count("api") != 0 {
					t.Fatalf("redelivery while held: %+v, %v", refs, err)
				}
				if err := errors.Join(c.Resume(ctx, "ana"), c.ResetBreaker(ctx, "ana")); err != nil {
					t.Fatal(err)
				}
				switch then {
				case "approve":
					u, err := r.runner.Approvals().Approve(ctx, id, "ana", "checked")
					if err != nil || u.Ref.Status != incidents.ActionVerified {
						t.Fatalf("approve after the resume: %+v, %v", u, err)
					}
				case "redeliver":
					refs, err := r.runner.Act(ctx, req)
					if err != nil || refs[0].Status != incidents.ActionVerified {
						t.Fatalf("redelivery after the resume: %+v, %v", refs, err)
					}
				}
				if refs, err := r.runner.Act(ctx, req); err != nil || refs[0].Status != incidents.ActionVerified {
					t.Fatalf("a later delivery: %+v, %v", refs, err)
				}
				if n := r.exec.count("api"); n != 1 {
					t.Fatalf("applied %d times, want once", n)
				}
			})
		}
	}
}

// An approved action that fails retryably stays approved and is retried on later ticks
// (with the runner's backoff) until it succeeds; every attempt is recorded, and the
// held action's record tells how it stands.
func TestApprovedRetryableFailureIsRetried(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{Attempts: 3, ApprovalTTL: time.Hour}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI))
	id := refs[0].ID
	r.exec.failures = []error{errUnavailable, errUnavailable, errUnavailable, errUnavailable}
	u, err := r.runner.Approvals().Approve(ctx, id, "ana", "confirmed")
	if err != nil || u.Ref.Status != incidents.ActionFailed || !strings.Contains(u.Ref.Detail, "retried until") {
		t.Fatalf("approve during the outage: %+v, %v", u, err)
	}
	h := r.heldOf(t, id)
	if h.State != HoldApproved || h.Attempts != 1 || !strings.Contains(h.LastError, "503") || !h.RetryAt.After(r.clk.Now()) {
		t.Fatalf("held record %+v", h)
	}
	if _, err := r.runner.Approvals().Approve(ctx, id, "bob", ""); !errors.Is(err, ErrDecided) {
		t.Fatalf("approving an approved action again: %v", err)
	}
	// Not due yet: the tick runs nothing.
	if ups, err := r.runner.Approvals().Expire(ctx); err != nil || len(ups) != 0 || r.exec.count("api") != 0 {
		t.Fatalf("tick before the backoff: %+v, %v", ups, err)
	}
	// Nor does a redelivery of the decision.
	if again, err := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI)); err != nil || again[0].Status != incidents.ActionHeld {
		t.Fatalf("redelivery before the backoff: %+v, %v", again, err)
	}
	r.clk.Advance(10 * time.Second)
	ups, err := r.runner.Approvals().Expire(ctx) // one more attempt: still down
	if err != nil || len(ups) != 1 || ups[0].Ref.Status != incidents.ActionFailed || r.heldOf(t, id).Attempts != 2 {
		t.Fatalf("tick in the outage: %+v, %v", ups, err)
	}
	r.clk.Advance(10 * time.Second)
	ups, err = r.runner.Approvals().Expire(ctx) // Vault is back
	if err != nil || len(ups) != 1 || ups[0].Ref.Status != incidents.ActionVerified || ups[0].Incident != "inc-1" {
		t.Fatalf("tick after the outage: %+v, %v", ups, err)
	}
	if h := r.heldOf(t, id); h.State != HoldDone || h.Attempts != 3 || h.LastError != "" {
		t.Fatalf("held record %+v, want done", h)
	}
	r.clk.Advance(time.Minute)
	if ups, err := r.runner.Approvals().Expire(ctx); err != nil || len(ups) != 0 {
		t.Fatalf("tick after done: %+v, %v", ups, err)
	}
	if n := r.exec.count("api"); n != 1 {
		t.Fatalf("applied %d times, want once", n)
	}
	if s := r.stages(t); s["approved"] != 1 || s["failed"] != 2 || s["verified"] != 1 ||
		s["apply-attempt-1"] != 2 || s["apply-attempt-2"] != 1 || s["apply-attempt-3"] != 1 {
		t.Fatalf("stages %v: every attempt recorded", s)
	}
}

// An approved action that keeps failing retryably fails once its retry deadline passes,
// and may then be approved again.
func TestApprovedRetryDeadline(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{Attempts: 1, ApprovalTTL: time.Hour}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI))
	id := refs[0].ID
	for range 100 {
		r.exec.failures = append(r.exec.failures, errUnavailable)
	}
	if u, err := r.runner.Approvals().Approve(ctx, id, "ana", ""); err != nil || u.Ref.Status != incidents.ActionFailed {
		t.Fatalf("approve: %+v, %v", u, err)
	}
	for range 5 {
		r.clk.Advance(10 * time.Minute)
		if _, err := r.runner.Approvals().Expire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	r.clk.Advance(15 * time.Minute) // past the deadline
	ups, err := r.runner.Approvals().Expire(ctx)
	if err != nil || len(ups) != 1 || ups[0].Ref.Status != incidents.ActionFailed || !strings.Contains(ups[0].Ref.Detail, "deadline") {
		t.Fatalf("tick past the deadline: %+v, %v", ups, err)
	}
	if h := r.heldOf(t, id); h.State != HoldFailed || h.Attempts != 6 {
		t.Fatalf("held record %+v", h)
	}
	r.exec.mu.Lock()
	r.exec.failures = nil
	r.exec.mu.Unlock()
	if u, err := r.runner.Approvals().Approve(ctx, id, "bob", "vault is back"); err != nil || u.Ref.Status != incidents.ActionVerified {
		t.Fatalf("approve again: %+v, %v", u, err)
	}
	if s := r.stages(t); s["approved"] != 2 || s["retry-deadline"] != 1 || s["verified"] != 1 {
		t.Fatalf("stages %v", s)
	}
}

// After a permanent failure, the action can be approved again (not "already decided")
// and runs again; an unanswered failed hold expires like a pending one.
func TestApprovedPermanentFailureCanBeApprovedAgain(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{ApprovalTTL: time.Hour}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI))
	id := refs[0].ID
	r.exec.failures = []error{killswitch.Permanent(killswitch.ReasonDenied, errors.New("403 permission denied"))}
	u, err := r.runner.Approvals().Approve(ctx, id, "ana", "")
	if err != nil || u.Ref.Status != incidents.ActionFailed {
		t.Fatalf("approve: %+v, %v", u, err)
	}
	if h := r.heldOf(t, id); h.State != HoldFailed || !strings.Contains(h.LastError, "403") {
		t.Fatalf("held record %+v", h)
	}
	// The tick does not retry a permanent failure.
	r.clk.Advance(time.Minute)
	if ups, err := r.runner.Approvals().Expire(ctx); err != nil || len(ups) != 0 || r.exec.count("api") != 0 {
		t.Fatalf("tick after a permanent failure: %+v, %v", ups, err)
	}
	u, err = r.runner.Approvals().Approve(ctx, id, "bob", "policy fixed")
	if err != nil || u.Ref.Status != incidents.ActionVerified || r.exec.count("api") != 1 {
		t.Fatalf("approve again: %+v, %v", u, err)
	}
	if h := r.heldOf(t, id); h.State != HoldDone || h.Approvals != 2 || h.Approver != "bob" {
		t.Fatalf("held record %+v", h)
	}
	if _, err := r.runner.Approvals().Approve(ctx, id, "carl", ""); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve a done action: %v", err)
	}
	if s := r.stages(t); s["approved"] != 2 || s["verified"] != 1 {
		t.Fatalf("stages %v: both approvals recorded", s)
	}
	// A failed hold nobody approves again expires.
	refs, _ = r.runner.Act(ctx, r.request("v02", "inc-2", true, revokeAPI))
	r.exec.failures = []error{killswitch.Permanent(killswitch.ReasonDenied, errors.New("403"))}
	if _, err := r.runner.Approvals().Approve(ctx, refs[0].ID, "ana", ""); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(2 * time.Hour)
	ups, err := r.runner.Approvals().Expire(ctx)
	if err != nil || len(ups) != 1 || ups[0].Ref.Status != incidents.ActionExpired {
		t.Fatalf("expiry of a failed hold: %+v, %v", ups, err)
	}
}

// An action approved while automation is paused waits, approved, and runs once after
// the resume (on the next tick).
func TestApprovedWhilePaused(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	refs, _ := r.runner.Act(ctx, r.request("v01", "inc-1", true, revokeAPI))
	id := refs[0].ID
	c := r.runner.Control()
	if err := c.Pause(ctx, "ana", "drill"); err != nil {
		t.Fatal(err)
	}
	u, err := r.runner.Approvals().Approve(ctx, id, "ana", "")
	if err != nil || u.Ref.Status != incidents.ActionHeld || r.exec.count("api") != 0 {
		t.Fatalf("approve while paused: %+v, %v", u, err)
	}
	if h := r.heldOf(t, id); h.State != HoldApproved {
		t.Fatalf("held record %+v", h)
	}
	r.clk.Advance(time.Minute)
	if ups, err := r.runner.Approvals().Expire(ctx); err != nil || len(ups) != 0 || r.exec.count("api") != 0 {
		t.Fatalf("tick while paused: %+v, %v", ups, err)
	}
	if err := c.Resume(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	ups, err := r.runner.Approvals().Expire(ctx)
	if err != nil || len(ups) != 1 || ups[0].Ref.Status != incidents.ActionVerified || r.exec.count("api") != 1 {
		t.Fatalf("tick after the resume: %+v, %v", ups, err)
	}
	if ups, err := r.runner.Approvals().Expire(ctx); err != nil || len(ups) != 0 || r.exec.count("api") != 1 {
		t.Fatalf("next tick: %+v, %v", ups, err)
	}
}
