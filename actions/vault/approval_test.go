package vault_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// switchVault is a hand-written Vault for the approval fault paths: one token that
// revoke-accessor kills and lookup-accessor finds, while status is 0; any other status
// answers every request with it (503: sealed; 403: the policy lacks the capability).
type switchVault struct {
	status  atomic.Int32
	revoked atomic.Bool
	revokes atomic.Int32
}

// fakeInventory is the one vendor of switchVault.
var fakeInventory = killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
	"api": {Kind: killswitch.CredTokenAccessor, Accessor: "acc-in-clear"}}}}

func (v *switchVault) client(t *testing.T) *api.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if s := int(v.status.Load()); s != 0 {
			w.WriteHeader(s)
			_, _ = w.Write([]byte(`{"errors":["` + http.StatusText(s) + `"]}`))
			return
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/auth/token/revoke-accessor"):
			v.revokes.Add(1)
			v.revoked.Store(true)
			w.WriteHeader(http.StatusNoContent)
		case strings.HasSuffix(r.URL.Path, "/auth/token/lookup-accessor") && v.revoked.Load():
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errors":["invalid accessor"]}`))
		case strings.HasSuffix(r.URL.Path, "/auth/token/lookup-accessor"):
			_, _ = w.Write([]byte(`{"data":{"display_name":"token-mailer","policies":["default"],"ttl":3600}}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[]}`))
		}
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("t")
	return c
}

// approvalRig is the guard rails in front of the Vault executors on client, with one
// approval-required action held: revoking the "api" token of vendor.
type approvalRig struct {
	runner *actions.Runner
	clk    *clock.Manual
	led    *ledger.Memory
	id     string
}

func newApprovalRig(t testing.TB, client *api.Client, cfg actions.Settings, inv killswitch.Inventory, vendor string) *approvalRig {
	t.Helper()
	r := &approvalRig{clk: clock.NewManual(time.Now()), led: ledger.NewMemory()}
	var err error
	r.runner, err = actions.New(cfg, actions.Deps{
		Store: actions.NewMemoryStore(), Ledger: r.led, Inventory: inv, Clock: r.clk, Instance: "a",
		Sleep: func(context.Context, time.Duration) error { return nil }, Executors: vault.New(client), Fingerprint: fp,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api", Mode: killswitch.ModeEnforce}
	refs, err := r.runner.Act(context.Background(), actions.Request{
		Incident: &incidents.Incident{ID: "inc-1", Vendor: vendor, Credential: "api"},
		Result: playbooks.Result{ID: "dec-1", Decision: playbooks.Decision{Actions: []playbooks.Action{a},
			RequiresApproval: true, Reason: "single source"}},
		Vendor: inv.Vendor(vendor),
	})
	if err != nil || refs[0].Status != incidents.ActionHeld {
		t.Fatalf("held: %+v, %v", refs, err)
	}
	r.id = refs[0].ID
	return r
}

// state returns the held action's record.
func (r *approvalRig) state(t testing.TB) actions.Held {
	t.Helper()
	list, err := r.runner.Approvals().List(context.Background())
	if err != nil || len(list) != 1 {
		t.Fatalf("held actions %+v, %v", list, err)
	}
	return list[0]
}

// tick runs the approvals' tick after d and returns the one update it gave.
func (r *approvalRig) tick(t testing.TB, d time.Duration) incidents.ActionRef {
	t.Helper()
	r.clk.Advance(d)
	ups, err := r.runner.Approvals().Expire(context.Background())
	if err != nil || len(ups) != 1 {
		t.Fatalf("tick: %+v, %v", ups, err)
	}
	return ups[0].Ref
}

// An action approved while Vault answers 503 stays approved, is retried on the ticks,
// and is revoked once when Vault recovers.
func TestApprovedDuringVaultOutage(t *testing.T) {
	ctx := context.Background()
	v := &switchVault{}
	r := newApprovalRig(t, v.client(t), actions.Settings{Attempts: 2}, fakeInventory, "mailer")
	v.status.Store(http.StatusServiceUnavailable)
	u, err := r.runner.Approvals().Approve(ctx, r.id, "ana", "confirmed")
	if err != nil || u.Ref.Status != incidents.ActionFailed {
		t.Fatalf("approve in the outage: %+v, %v", u, err)
	}
	if h := r.state(t); h.State != actions.HoldApproved || !strings.Contains(h.LastError, "503") {
		t.Fatalf("held record %+v", h)
	}
	if _, err := r.runner.Approvals().Approve(ctx, r.id, "bob", ""); !errors.Is(err, actions.ErrDecided) {
		t.Fatalf("approve again while it is retried: %v", err)
	}
	if ref := r.tick(t, 10*time.Second); ref.Status != incidents.ActionFailed {
		t.Fatalf("tick in the outage: %+v", ref)
	}
	v.status.Store(0)
	if ref := r.tick(t, 10*time.Second); ref.Status != incidents.ActionVerified {
		t.Fatalf("tick after the recovery: %+v", ref)
	}
	if h := r.state(t); h.State != actions.HoldDone || h.Attempts != 3 || v.revokes.Load() != 1 {
		t.Fatalf("held record %+v, %d revokes", h, v.revokes.Load())
	}
	for _, rec := range r.led.Records() {
		if strings.Contains(string(rec.Payload), "acc-in-clear") {
			t.Fatalf("the accessor is in the ledger in clear: %s", rec.Payload)
		}
	}
}

// An approved action Vault refuses (403: permanent) fails; once the policy is fixed it
// can be approved again and runs.
func TestApprovedForbiddenThenApprovedAgain(t *testing.T) {
	ctx := context.Background()
	v := &switchVault{}
	r := newApprovalRig(t, v.client(t), actions.Settings{Attempts: 3}, fakeInventory, "mailer")
	v.status.Store(http.StatusForbidden)
	u, err := r.runner.Approvals().Approve(ctx, r.id, "ana", "")
	if err != nil || u.Ref.Status != incidents.ActionFailed {
		t.Fatalf("approve: %+v, %v", u, err)
	}
	if h := r.state(t); h.State != actions.HoldFailed {
		t.Fatalf("held record %+v", h)
	}
	v.status.Store(0)
	u, err = r.runner.Approvals().Approve(ctx, r.id, "bob", "policy fixed")
	if err != nil || u.Ref.Status != incidents.ActionVerified || v.revokes.Load() != 1 {
		t.Fatalf("approve again: %+v, %v, %d revokes", u, err, v.revokes.Load())
	}
}

// Against the real dev Vault, stopped: an approval in the outage stays approved; once
// Vault runs again the next tick revokes the token, and it is dead.
func TestApprovedDuringRealVaultOutage(t *testing.T) {
	e := newEnv(t)
	inv, secret := e.tokens(t, 1)
	e.ks.SetClientTimeout(2 * time.Second)
	r := newApprovalRig(t, e.ks, actions.Settings{Attempts: 2, CallTimeout: 200 * time.Millisecond}, inv, "v00")
	if err := e.v.Process.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = e.v.Process.Resume()
		}
	})
	u, err := r.runner.Approvals().Approve(context.Background(), r.id, "ana", "")
	if err != nil || u.Ref.Status != incidents.ActionFailed {
		t.Fatalf("approve with Vault stopped: %+v, %v", u, err)
	}
	if h := r.state(t); h.State != actions.HoldApproved {
		t.Fatalf("held record %+v", h)
	}
	resumed = true
	if err := e.v.Process.Resume(); err != nil {
		t.Fatal(err)
	}
	if ref := r.tick(t, 10*time.Second); ref.Status != incidents.ActionVerified {
		t.Fatalf("tick with Vault back: %+v", ref)
	}
	if e.alive(t, secret["v00/api"]) {
		t.Fatal("the token still works")
	}
}
