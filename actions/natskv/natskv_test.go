package natskv_test

import (
	"context"
	"errors"
	"fmt"
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
