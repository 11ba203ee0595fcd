package natskv_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/natskv"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/nats-io/nats.go/jetstream"
)

// slowVault is one Vault shared by two instances: it revokes slowly and counts.
type slowVault struct {
	applies atomic.Int32
	dead    atomic.Bool
}

func (v *slowVault) Plan(context.Context, actions.Target) (actions.Plan, error) {
	return actions.Plan{}, nil
}

func (v *slowVault) Apply(ctx context.Context, _ actions.Target) (actions.Outcome, error) {
	select {
	case <-time.After(50 * time.Millisecond):
	case <-ctx.Done():
		return actions.Outcome{}, ctx.Err()
	}
	v.applies.Add(1)
	return actions.Outcome{AlreadyDone: v.dead.Swap(true)}, nil
}

func (v *slowVault) Verify(context.Context, actions.Target) (actions.Verification, error) {
	return actions.Verification{Dead: v.dead.Load(), Evidence: "lookup"}, nil
}

func open(t *testing.T) *natskv.Store {
	t.Helper()
	js, err := jetstream.New(testharness.Connect(t, testharness.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := natskv.Open(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Two instances share the fleet state in JetStream KV and get the same decision at once:
// the claim makes Vault see one revocation, and both report it verified.
func TestTwoInstancesAtOnceRevokeOnce(t *testing.T) {
	ctx := context.Background()
	store := open(t)
	vault := &slowVault{}
	inv := killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
		"api": {Kind: killswitch.CredTokenAccessor, Accessor: "acc"}}}}
	act := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api", Mode: killswitch.ModeEnforce}
	req := actions.Request{
		Incident: &incidents.Incident{ID: "inc-1", Vendor: "mailer", Credential: "api"},
		Result:   playbooks.Result{ID: "dec-1", Decision: playbooks.Decision{Actions: []playbooks.Action{act}, Reason: "test"}},
		Vendor:   inv.Vendor("mailer"),
	}
	var wg sync.WaitGroup
	var verified atomic.Int32
	for _, instance := range []string{"instance-a", "instance-b"} {
		r, err := actions.New(actions.Settings{}, actions.Deps{
			Store: store, Ledger: ledger.NewMemory(), Inventory: inv, Clock: clock.Real{}, Instance: instance,
			Executors: actions.Registry{killswitch.ActionRevokeTokenAccessor: vault},
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			refs, err := r.Act(ctx, req)
			if err != nil {
				t.Error(err)
				return
			}
			if refs[0].Status == incidents.ActionVerified {
				verified.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := vault.applies.Load(); n != 1 || verified.Load() != 2 {
		t.Fatalf("applied %d times (want 1); %d instances report verified (want 2)", n, verified.Load())
	}
}

// The store keeps JetStream KV's semantics: Create is a latch, Update a compare-and-set.
func TestStoreSemantics(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if _, _, err := s.Get(ctx, actions.ClaimsBucket, "k"); !errors.Is(err, actions.ErrNotFound) {
		t.Fatalf("get missing = %v", err)
	}
	rev, err := s.Create(ctx, actions.ClaimsBucket, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, actions.ClaimsBucket, "k", []byte("2")); !errors.Is(err, actions.ErrExists) {
		t.Fatalf("second create = %v", err)
	}
	if _, err := s.Update(ctx, actions.ClaimsBucket, "k", []byte("3"), rev+10); !errors.Is(err, actions.ErrStale) {
		t.Fatalf("stale update = %v", err)
	}
	if _, err := s.Update(ctx, actions.ClaimsBucket, "k", []byte("4"), rev); err != nil {
		t.Fatal(err)
	}
	if v, _, err := s.Get(ctx, actions.ClaimsBucket, "k"); err != nil || string(v) != "4" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if keys, err := s.Keys(ctx, actions.ClaimsBucket); err != nil || len(keys) != 1 || keys[0] != "k" {
		t.Fatalf("keys = %v, %v", keys, err)
	}
	if _, _, err := s.Get(ctx, "nope", "k"); err == nil || !killswitch.IsPermanent(err) {
		t.Fatalf("unknown bucket = %v, want a permanent error", err)
	}
}

// Two instances share the control bucket; each keeps a mirror of it through the KV
// watch. A pause by one holds the other's next action, and the fleet budget is never
// overspent, whatever the mirrors lag: the counters are compare-and-set in the bucket.
func TestControlMirror(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := open(t)
	inv := killswitch.Inventory{}
	for i := range 8 {
		inv[fmt.Sprintf("v%d", i)] = killswitch.Vendor{Credentials: map[string]killswitch.Credential{
			"api": {Kind: killswitch.CredTokenAccessor, Accessor: fmt.Sprintf("acc-%d", i)}}}
	}
	vault := &countingVault{}
	newRunner := func(name string) *actions.Runner {
		r, err := actions.New(actions.Settings{Budget: 3}, actions.Deps{
			Store: store, Ledger: ledger.NewMemory(), Inventory: inv, Clock: clock.Real{}, Instance: name,
			Executors: actions.Registry{killswitch.ActionRevokeTokenAccessor: vault},
		})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = r.Control().Watch(ctx) }()
		return r
	}
	a, b := newRunner("a"), newRunner("b")
	req := func(vendor string) actions.Request {
		act := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api", Mode: killswitch.ModeEnforce}
		return actions.Request{
			Incident: &incidents.Incident{ID: "inc-" + vendor, Vendor: vendor, Credential: "api"},
			Result:   playbooks.Result{ID: "dec-" + vendor, Decision: playbooks.Decision{Actions: []playbooks.Action{act}, Reason: "test"}},
			Vendor:   inv.Vendor(vendor),
		}
	}
	// seen waits until r's control plane (its mirror, once the watch has synced) shows
	// the pause switch as want.
	seen := func(r *actions.Runner, want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, err := r.Control().Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Paused.On == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the pause switch did not become %v for this instance", want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := b.Control().Pause(ctx, "ana", "drill"); err != nil {
		t.Fatal(err)
	}
	seen(a, true)
	refs, err := a.Act(ctx, req("v0"))
	if err != nil || refs[0].Status != incidents.ActionHeld {
		t.Fatalf("the pause by another instance was not honoured: %+v, %v", refs, err)
	}
	if err := a.Control().Resume(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	seen(a, false)
	seen(b, false)
	verified := 0
	for i := 1; i < 8; i++ {
		r := a
		if i%2 == 0 {
			r = b
		}
		refs, err := r.Act(ctx, req(fmt.Sprintf("v%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if refs[0].Status == incidents.ActionVerified {
			verified++
		}
	}
	if verified != 3 || vault.applies.Load() != 3 {
		t.Fatalf("%d verified, %d applied; the fleet budget is 3", verified, vault.applies.Load())
	}
}

// countingVault revokes at once and counts.
type countingVault struct{ applies atomic.Int32 }

func (v *countingVault) Plan(context.Context, actions.Target) (actions.Plan, error) {
	return actions.Plan{}, nil
}

func (v *countingVault) Apply(context.Context, actions.Target) (actions.Outcome, error) {
	v.applies.Add(1)
	return actions.Outcome{}, nil
}

func (v *countingVault) Verify(context.Context, actions.Target) (actions.Verification, error) {
	return actions.Verification{Dead: true, Evidence: "lookup"}, nil
}

// Two instances share the fleet budget's sliding window in JetStream KV and consume it
// at once, each with its own mirror of the control bucket: in no interval of the
// window's length do more units pass than the budget, refunds give units back, and a
// lost race is a retryable conflict, never a pass.
func TestSlidingBudgetTwoInstances(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := open(t)
	const budget, window, run = 5, 400 * time.Millisecond, 2 * time.Second
	var controls []*actions.Control
	for _, name := range []string{"a", "b"} {
		r, err := actions.New(actions.Settings{Budget: budget, BudgetWindow: window}, actions.Deps{
			Store: store, Ledger: ledger.NewMemory(), Clock: clock.Real{}, Instance: name,
		})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = r.Control().Watch(ctx) }()
		controls = append(controls, r.Control())
	}
	var (
		mu                        sync.Mutex
		passed                    []time.Time
		holds, conflicts, refunds int
		wg                        sync.WaitGroup
		end                       = time.Now().Add(run)
	)
	for w := range 8 {
		g := actions.BudgetGuard{C: controls[w%2]}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				c := actions.Check{Now: time.Now(), Action: fmt.Sprintf("act-%d-%d", w, i), Vendor: "v"}
				hold, err := g.Check(ctx, c)
				refund := err == nil && hold == "" && i%3 == 2
				if refund {
					if err := g.Refund(ctx, c); err != nil {
						t.Error(err)
					}
				}
				mu.Lock()
				switch {
				case err != nil && killswitch.IsRetryable(err) && killswitch.ReasonOf(err) == killswitch.ReasonConflict:
					conflicts++
				case err != nil:
					t.Errorf("consume: %v", err)
				case refund:
					refunds++
				case hold == "":
					passed = append(passed, c.Now)
				default:
					holds++
				}
				mu.Unlock()
				time.Sleep(time.Duration(5+w) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(passed, func(a, b time.Time) int { return a.Compare(b) })
	worst := 0
	for i, p := range passed {
		n := 0
		for _, q := range passed[i:] {
			if q.Sub(p) < window {
				n++
			}
		}
		worst = max(worst, n)
	}
	t.Logf("%d passed, %d refunded, %d held, %d conflicts; at most %d in any %s", len(passed), refunds, holds, conflicts, worst, window)
	if worst > budget {
		t.Fatalf("%d units passed within %s; the budget is %d", worst, window, budget)
	}
	if len(passed) <= budget || holds == 0 {
		t.Fatalf("%d passed, %d held: the window did not slide, or never filled", len(passed), holds)
	}
}

// flakyVault fails its first Apply calls with a Vault outage, then revokes and counts.
type flakyVault struct {
	failures atomic.Int32
	countingVault
}

func (v *flakyVault) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	if v.failures.Add(-1) >= 0 {
		return actions.Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("vault: 503"))
	}
	return v.countingVault.Apply(ctx, t)
}

// A redelivered action whose claim was left failed by a Vault outage, while another
// instance paused automation: held (not applied) by the check immediately before Apply;
// after the resume an approval runs it, once.
func TestPausedRedeliveryHeldThenRunsOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := open(t)
	inv := killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
		"api": {Kind: killswitch.CredTokenAccessor, Accessor: "acc"}}}}
	vault := &flakyVault{}
	vault.failures.Store(2)
	var runners []*actions.Runner
	for _, name := range []string{"a", "b"} {
		r, err := actions.New(actions.Settings{Attempts: 2}, actions.Deps{
			Store: store, Ledger: ledger.NewMemory(), Inventory: inv, Clock: clock.Real{}, Instance: name,
			Sleep:     func(context.Context, time.Duration) error { return nil },
			Executors: actions.Registry{killswitch.ActionRevokeTokenAccessor: vault},
		})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = r.Control().Watch(ctx) }()
		runners = append(runners, r)
	}
	a, b := runners[0], runners[1]
	act := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api", Mode: killswitch.ModeEnforce}
	req := actions.Request{
		Incident: &incidents.Incident{ID: "inc-1", Vendor: "mailer", Credential: "api"},
		Result:   playbooks.Result{ID: "dec-1", Decision: playbooks.Decision{Actions: []playbooks.Action{act}, Reason: "test"}},
		Vendor:   inv.Vendor("mailer"),
	}
	if refs, err := a.Act(ctx, req); !killswitch.IsRetryable(err) || refs[0].Status != incidents.ActionFailed {
		t.Fatalf("first delivery in the outage: %+v, %v", refs, err)
	}
	seen := func(r *actions.Runner, want bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if st, err := r.Control().Status(ctx); err == nil && st.Paused.On == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the pause switch did not become %v", want)
			}
		}
	}
	if err := b.Control().Pause(ctx, "ana", "drill"); err != nil {
		t.Fatal(err)
	}
	seen(a, true)
	refs, err := a.Act(ctx, req) // the redelivery: its claim exists
	if err != nil || refs[0].Status != incidents.ActionHeld || vault.applies.Load() != 0 {
		t.Fatalf("redelivery while paused: %+v, %v, %d applied", refs, err, vault.applies.Load())
	}
	if err := b.Control().Resume(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	seen(a, false)
	u, err := b.Approvals().Approve(ctx, refs[0].ID, "ana", "after the drill")
	if err != nil || u.Ref.Status != incidents.ActionVerified {
		t.Fatalf("approve after the resume: %+v, %v", u, err)
	}
	if refs, err := a.Act(ctx, req); err != nil || refs[0].Status != incidents.ActionVerified || vault.applies.Load() != 1 {
		t.Fatalf("a later delivery: %+v, %v; applied %d times, want once", refs, err, vault.applies.Load())
	}
}
