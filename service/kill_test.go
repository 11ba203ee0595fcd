package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/users"
)

// killRig is a dev Vault and PostgreSQL with two seeded vendors (mailer, to be cut off;
// crm, to be left alone), and the Vault executors on a token holding exactly the policy
// the inventory needs.
type killRig struct {
	mailer, crm *testharness.SeededVendor
	inv         killswitch.Inventory
	client      *api.Client
}

func newKillRig(t *testing.T) *killRig {
	t.Helper()
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	pg := testharness.Postgres(t)
	r := &killRig{mailer: testharness.SeedVendor(t, root, pg, "mailer"), crm: testharness.SeedVendor(t, root, pg, "crm")}
	r.inv = killswitch.Inventory{"mailer": r.mailer.Vendor, "crm": r.crm.Vendor}
	policy, err := vault.PolicyFor(r.inv)
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "killswitch", policy); err != nil {
		t.Fatal(err)
	}
	ks, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"killswitch"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if r.client, err = api.NewClient(&api.Config{Address: v.Addr, Timeout: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	r.client.SetToken(ks.Auth.ClientToken)
	return r
}

const killConfig = `
kill:
  second_approver: true
`

// The whole life of a cut-off against the real dev Vault and PostgreSQL: the plan of
// everything a seeded vendor holds (3 tokens of its entity, 2 secret-ids, 5 database
// leases, 2 KV secrets, its policy) is shown before anything runs; the kill waits for a
// second admin; approved, every token of the entity is denied, every secret-id login
// fails, every lease and database login is gone and the old KV versions are destroyed,
// in one incident with one exposure window; a vendor not named is untouched. Restored
// as a false positive, the entity's tokens work again, the new secret-id (unwrapped)
// logs in, the KV secret is handed over wrapped, the policy reads back as before; the
// wrapping tokens appear in the answer only, never in the ledger or the incident.
func TestKillVendorAndRestore(t *testing.T) {
	ctx := context.Background()
	rig := newKillRig(t)
	dir := t.TempDir()
	s := start(t, options{cfg: killConfig, vendors: rig.inv, execs: vault.New(rig.client), vaultClient: rig.client, dataDir: dir})
	store := users.Open(users.Path(dir), users.Options{})
	_, second, err := store.Add(ctx, "bob", users.Admin)
	if err != nil {
		t.Fatal(err)
	}
	_, viewer, err := store.Add(ctx, "val", users.Viewer)
	if err != nil {
		t.Fatal(err)
	}

	// The plan, read-only.
	start := time.Now()
	code, b := s.api(t, "GET", "/api/vendors/mailer/kill-plan", "")
	if code != 200 {
		t.Fatalf("plan: %d %s", code, b)
	}
	var plan pipeline.KillPlan
	decode(t, b, &plan)
	t.Logf("plan: %d steps (%d enumerated) in %s", len(plan.Steps), plan.Enumerated, time.Since(start).Round(time.Millisecond))
	if len(plan.Problems) > 0 {
		t.Fatalf("plan problems: %v", plan.Problems)
	}
	// inventory: mailer-api (token), mailer-policy; enumerated: 2 secret-ids, the lease
	// prefix, 2 KV secrets, the entity.
	if len(plan.Steps) != 8 || plan.Enumerated != 6 {
		t.Fatalf("plan has %d steps (%d enumerated), want 8 (6): %+v", len(plan.Steps), plan.Enumerated, plan.Steps)
	}
	if strings.Contains(string(b), rig.mailer.SecretIDs[0].Accessor) || strings.Contains(string(b), rig.mailer.Tokens[0].Accessor) {
		t.Fatal("the plan shows an accessor in clear")
	}
	if err := rig.mailer.Untouched(rig.mailer.State(t)); err != nil {
		t.Fatalf("planning changed something: %v", err)
	}

	// Ordered by the bootstrap admin; a viewer may not; the orderer may not approve.
	if code, b := s.apiAs(t, viewer, "POST", "/api/vendors/mailer/kill", `{"reason":"x"}`); code != 403 {
		t.Fatalf("viewer kill: %d %s", code, b)
	}
	code, b = s.api(t, "POST", "/api/vendors/mailer/kill", `{"reason":"mailer breached: stolen keys in a paste"}`)
	var o httpapi.KillResponse
	decode(t, b, &o)
	if code != 200 || o.State != pipeline.KillPending {
		t.Fatalf("kill: %d %s", code, b)
	}
	if err := rig.mailer.Untouched(rig.mailer.State(t)); err != nil {
		t.Fatalf("a pending kill changed something: %v", err)
	}
	if code, b := s.api(t, "POST", "/api/kills/"+o.ID+"/approve", `{}`); code != 409 || !strings.Contains(string(b), "someone other") {
		t.Fatalf("self-approval: %d %s", code, b)
	}
	start = time.Now()
	code, b = s.apiAs(t, second, "POST", "/api/kills/"+o.ID+"/approve", `{}`)
	took := time.Since(start)
	decode(t, b, &o)
	if code != 200 || o.State != pipeline.KillDone || o.Error != "" {
		t.Fatalf("approve: %d %s", code, b)
	}
	t.Logf("kill approved → every action verified: %s (apply+verify %.0f ms); %d actions", took.Round(time.Millisecond), o.ApplySeconds*1000, len(o.Actions))
	for _, a := range o.Actions {
		// The entity's cut is proven by Vault refusing a token of it (verified before that
		// token's own revocation).
		if a.Type == killswitch.ActionDisableEntity && !strings.Contains(a.Detail, "capabilities-accessor") {
			t.Errorf("the entity's verification proves no refusal: %s", a.Detail)
		}
	}
	st := rig.mailer.State(t)
	if err := rig.mailer.Killed(st); err != nil {
		t.Fatal(err)
	}
	if err := rig.crm.Untouched(rig.crm.State(t)); err != nil {
		t.Fatalf("the vendor not named was touched: %v", err)
	}
	in := s.incidentByID(t, o.Incident)
	if in.Kill == nil || in.Kill.ApprovedBy != "bob" || in.Kill.RequestedBy != "admin" || in.State != incidents.StateContained ||
		in.ExposureWindowSeconds == nil {
		t.Fatalf("incident: %+v", in)
	}

	// Restored as a false positive by the second admin.
	start = time.Now()
	code, b = s.apiAs(t, second, "POST", "/api/incidents/"+in.ID+"/restore", `{"reason":"the paste held test keys"}`)
	if code != 200 {
		t.Fatalf("restore: %d %s", code, b)
	}
	t.Logf("restore: %s", time.Since(start).Round(time.Millisecond))
	var res struct {
		Restoration pipeline.Restoration `json:"restoration"`
		Error       string               `json:"error"`
	}
	decode(t, b, &res)
	if res.Error != "" || !res.Restoration.Note.Complete {
		t.Fatalf("restore incomplete: %s", b)
	}
	outcomes := map[incidents.RestoreOutcome]int{}
	for _, step := range res.Restoration.Note.Steps {
		outcomes[step.Outcome]++
	}
	// entity and policy reversed; 2 secret-ids (one new secret-id) and 2 KV re-issued;
	// the token and the leases stay dead.
	if outcomes[incidents.RestoreReversed] != 2 || outcomes[incidents.RestoreReissued] != 4 || outcomes[incidents.RestoreStaysDead] != 2 {
		t.Fatalf("restore outcomes %v: %s", outcomes, b)
	}
	after := rig.mailer.State(t)
	for i, err := range after.Tokens {
		if err != nil && !rig.mailer.Tokens[i].Listed { // the listed token was revoked: it stays dead
			t.Errorf("token %d (%s) of the re-enabled entity still denied: %v", i, rig.mailer.Tokens[i].Via, err)
		}
	}
	if after.EntityDisabled || after.PolicyText != rig.mailer.PolicyText {
		t.Fatalf("entity disabled %v, policy %q", after.EntityDisabled, after.PolicyText)
	}
	var sidToken string
	for cred, w := range res.Restoration.Wrapped {
		if strings.HasPrefix(cred, "approle:") {
			sidToken = w.Token
		}
	}
	unwrapped, err := rig.client.Logical().UnwrapWithContext(ctx, sidToken)
	if err != nil || unwrapped == nil {
		t.Fatalf("unwrap the new secret-id: %v", err)
	}
	if err := rig.mailer.Login(t, unwrapped.Data["secret_id"].(string)); err != nil {
		t.Fatalf("the new secret-id does not log in: %v", err)
	}
	in = s.incidentByID(t, in.ID)
	if !in.FalsePositive || in.Restore == nil || in.Restore.TimeToRestoreSeconds <= 0 {
		t.Fatalf("incident not marked restored: %+v", in.Restore)
	}
	raw, _ := json.Marshal(in)
	for _, w := range res.Restoration.Wrapped {
		if strings.Contains(string(raw), w.Token) {
			t.Fatal("a wrapping token is stored in the incident")
		}
	}
	if err := rig.crm.Untouched(rig.crm.State(t)); err != nil {
		t.Fatalf("restore touched the vendor not named: %v", err)
	}
	if code, b := s.api(t, "POST", "/api/incidents/"+in.ID+"/restore", `{"reason":"again"}`); code != 409 {
		t.Fatalf("second restore: %d %s", code, b)
	}
	code, b = s.api(t, http.MethodGet, "/api/kills", "")
	var kills struct{ Kills []pipeline.KillOrder }
	decode(t, b, &kills)
	if code != 200 || len(kills.Kills) != 1 || kills.Kills[0].State != pipeline.KillRestored || kills.Kills[0].Restore == nil {
		t.Fatalf("kills: %d %s", code, b)
	}
}

func decode(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// incidentByID returns one incident through the API.
func (r *running) incidentByID(t testing.TB, id string) *incidents.Incident {
	t.Helper()
	code, b := r.api(t, http.MethodGet, "/api/incidents/"+id, "")
	if code != 200 {
		t.Fatalf("incident %s: %d %s", id, code, b)
	}
	var in incidents.Incident
	decode(t, b, &in)
	return &in
}
