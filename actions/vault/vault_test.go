package vault_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// fp is the fingerprinter every test target carries.
var fp = actions.NewFingerprinter([]byte("test-key"))

// conventionsPolicy is the policy Killswitch shipped before policies were scoped to the
// inventory: any token, lease, vendor-* policy or secret/vendors/* secret. The tests
// whose credentials are made on the fly and that are not about the token's scope run
// on it; CheckScope must call it broad.
const conventionsPolicy = `
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "sys/capabilities-self" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/approle/role/+/secret-id-accessor/lookup" { capabilities = ["update"] }
path "auth/approle/role/+/secret-id-accessor/destroy" { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "sys/leases/lookup/database/creds/*" { capabilities = ["list", "sudo"] }
path "sys/leases/revoke-prefix/database/creds/*" { capabilities = ["update", "sudo"] }
path "secret/data/vendors/*" { capabilities = ["read", "update"] }
path "secret/metadata/vendors/*" { capabilities = ["read", "patch"] }
path "secret/destroy/vendors/*" { capabilities = ["update"] }
path "sys/policies/acl/vendor-*" { capabilities = ["read", "update"] }
`

// env is a dev Vault with a vendor policy and the kill switch's own token holding
// conventionsPolicy (scoped: see scoped).
type env struct {
	v     *testharness.Vault
	root  *api.Client
	ks    *api.Client
	execs actions.Registry
}

func newEnv(t testing.TB) *env {
	t.Helper()
	v := testharness.DevVault(t)
	e := &env{v: v, root: v.Client(t)}
	ctx := context.Background()
	if err := e.root.Sys().PutPolicyWithContext(ctx, "vendor-acme", `path "secret/data/vendors/acme/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.root.KVv2("secret").Put(ctx, "vendors/acme/customers", map[string]any{"rows": "42"}); err != nil {
		t.Fatal(err)
	}
	e.ks = e.tokenClient(t, "killswitch", conventionsPolicy)
	e.execs = vault.New(e.ks)
	return e
}

// scoped returns a client and the executors on a fresh token holding only the policy
// generated for inv (policy name "ks-scoped-<n>"), proving that the executors work
// with exactly that policy.
func (e *env) scoped(t testing.TB, inv killswitch.Inventory) (*api.Client, actions.Registry) {
	t.Helper()
	policy, err := vault.PolicyFor(inv)
	if err != nil {
		t.Fatal(err)
	}
	c := e.tokenClient(t, fmt.Sprintf("ks-scoped-%d", time.Now().UnixNano()), policy)
	return c, vault.New(c)
}

// one is an inventory of one credential, "acme/cred".
func one(c killswitch.Credential) killswitch.Inventory {
	return killswitch.Inventory{"acme": {Credentials: map[string]killswitch.Credential{"cred": c}}}
}

// tokenClient creates a policy named name with rules (when rules is not empty) and
// returns a client holding a fresh token with only that policy.
func (e *env) tokenClient(t testing.TB, name, rules string) *api.Client {
	t.Helper()
	ctx := context.Background()
	if rules != "" {
		if err := e.root.Sys().PutPolicyWithContext(ctx, name, rules); err != nil {
			t.Fatal(err)
		}
	}
	sec, err := e.root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{name}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	c := e.v.Client(t)
	c.SetToken(sec.Auth.ClientToken)
	return c
}

// vendorToken creates a token holding vendor-acme, returning it and its accessor.
func (e *env) vendorToken(t testing.TB) (token, accessor string) {
	t.Helper()
	sec, err := e.root.Auth().Token().CreateOrphanWithContext(context.Background(), &api.TokenCreateRequest{
		Policies: []string{"vendor-acme"}, TTL: "1h", DisplayName: "acme-api"})
	if err != nil {
		t.Fatal(err)
	}
	return sec.Auth.ClientToken, sec.Auth.Accessor
}

func target(typ killswitch.ActionType, id killswitch.Credential) actions.Target {
	return actions.Target{Incident: "inc-1", Vendor: "acme", Credential: "cred", Identity: id,
		Action: playbooks.Action{Type: typ, Credential: "cred"}, Fingerprint: fp}
}

// lifecycle runs Plan, Apply, Verify, then Apply and Plan again, checking idempotency.
func lifecycle(t *testing.T, ex actions.Executor, tg actions.Target) (actions.Plan, actions.Outcome, actions.Verification) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	plan, err := ex.Plan(ctx, tg)
	if err != nil || plan.AlreadyGone || len(plan.Targets) == 0 {
		t.Fatalf("plan = %+v, %v; want a live target", plan, err)
	}
	out, err := ex.Apply(ctx, tg)
	if err != nil || out.AlreadyDone {
		t.Fatalf("apply = %+v, %v", out, err)
	}
	ver, err := ex.Verify(ctx, tg)
	if err != nil || !ver.Dead {
		t.Fatalf("verify = %+v, %v; want dead", ver, err)
	}
	again, err := ex.Apply(ctx, tg)
	if err != nil || !again.AlreadyDone {
		t.Fatalf("second apply = %+v, %v; want already done", again, err)
	}
	if p, err := ex.Plan(ctx, tg); err != nil || !p.AlreadyGone {
		t.Fatalf("plan after apply = %+v, %v; want already gone", p, err)
	}
	return plan, out, ver
}

// noClear fails when the secret appears in any of the texts.
func noClear(t *testing.T, secret string, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(s, secret) {
			t.Fatalf("%q shows %s in clear", s, secret)
		}
	}
}

func TestRevokeTokenAccessor(t *testing.T) {
	e := newEnv(t)
	token, acc := e.vendorToken(t)
	vc := e.v.Client(t)
	vc.SetToken(token)
	if _, err := vc.KVv2("secret").Get(context.Background(), "vendors/acme/customers"); err != nil {
		t.Fatalf("the vendor token reads before revocation: %v", err)
	}
	cred := killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc}
	_, execs := e.scoped(t, one(cred))
	plan, out, ver := lifecycle(t, execs[killswitch.ActionRevokeTokenAccessor], target(killswitch.ActionRevokeTokenAccessor, cred))
	if !strings.Contains(plan.Summary, `"token-acme-api"`) || !strings.Contains(plan.Targets[0], fp.Of(acc)) {
		t.Errorf("plan %+v does not name the token by display name and fingerprint", plan)
	}
	noClear(t, acc, append(plan.Targets, plan.Summary, out.Detail, ver.Evidence)...)
	if _, err := vc.Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the vendor token still works after verified revocation")
	}
}

func TestDestroySecretID(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	l := e.root.Logical()
	for _, role := range []string{"acme", "other"} {
		if _, err := l.Write("auth/approle/role/"+role, map[string]any{"token_policies": "vendor-acme"}); err != nil {
			t.Fatal(err)
		}
	}
	roleID, err := l.Read("auth/approle/role/acme/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := l.Write("auth/approle/role/acme/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	acc := sid.Data["secret_id_accessor"].(string)
	login := map[string]any{"role_id": roleID.Data["role_id"], "secret_id": sid.Data["secret_id"]}
	if _, err := l.Write("auth/approle/login", login); err != nil {
		t.Fatalf("login before: %v", err)
	}
	ex := e.execs[killswitch.ActionDestroySecretID]
	cred := killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "acme", SecretIDAccessor: acc}
	_, scoped := e.scoped(t, one(cred))

	// The accessor is checked against the role the inventory names.
	wrong := target(killswitch.ActionDestroySecretID, killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "other", SecretIDAccessor: acc})
	if _, err := ex.Apply(ctx, wrong); err == nil || killswitch.IsRetryable(err) || !strings.Contains(err.Error(), "does not belong to role other") {
		t.Fatalf("apply under the wrong role = %v, want a permanent refusal", err)
	}
	if _, err := l.Write("auth/approle/login", login); err != nil {
		t.Fatalf("the wrong-role attempt destroyed the secret-id: %v", err)
	}

	plan, out, ver := lifecycle(t, scoped[killswitch.ActionDestroySecretID], target(killswitch.ActionDestroySecretID, cred))
	noClear(t, acc, append(plan.Targets, plan.Summary, out.Detail, ver.Evidence)...)
	if _, err := l.Write("auth/approle/login", login); err == nil || !strings.Contains(err.Error(), "invalid secret id") {
		t.Fatalf("login after destroy: %v, want invalid secret id", err)
	}
}

// databaseRole configures the database engine on pg and a role issuing logins.
func databaseRole(t *testing.T, l *api.Logical, pg *testharness.PG) {
	t.Helper()
	if _, err := l.Write("database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": pg.VaultConnectionURL(),
		"username": pg.SuperUser, "password": pg.Password, "allowed_roles": "acme",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write("database/roles/acme", map[string]any{
		"db_name": "pg", "default_ttl": "1h",
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
	}); err != nil {
		t.Fatal(err)
	}
}

type dbLogin struct{ user, password, lease string }

func issue(t *testing.T, l *api.Logical, pg *testharness.PG) dbLogin {
	t.Helper()
	s, err := l.Read("database/creds/acme")
	if err != nil {
		t.Fatal(err)
	}
	d := dbLogin{s.Data["username"].(string), s.Data["password"].(string), s.LeaseID}
	if err := pg.CanLogin(context.Background(), d.user, d.password); err != nil {
		t.Fatalf("login with Vault-issued credentials: %v", err)
	}
	return d
}

func TestRevokeLeasesPostgres(t *testing.T) {
	pg := testharness.Postgres(t)
	e := newEnv(t)
	l := e.root.Logical()
	databaseRole(t, l, pg)
	ctx := context.Background()

	t.Run("exact lease", func(t *testing.T) {
		mine, other := issue(t, l, pg), issue(t, l, pg)
		cred := killswitch.Credential{Kind: killswitch.CredLease, LeaseID: mine.lease}
		_, execs := e.scoped(t, one(cred))
		plan, out, ver := lifecycle(t, execs[killswitch.ActionRevokeLease], target(killswitch.ActionRevokeLease, cred))
		noClear(t, mine.lease, append(plan.Targets, plan.Summary, out.Detail, ver.Evidence)...)
		noClear(t, strings.TrimPrefix(mine.lease, "database/creds/acme/"), append(plan.Targets, plan.Summary, out.Detail, ver.Evidence)...)
		// The scoped token cannot revoke the other lease.
		_, err := execs[killswitch.ActionRevokeLease].Apply(ctx, target(killswitch.ActionRevokeLease, killswitch.Credential{Kind: killswitch.CredLease, LeaseID: other.lease}))
		if err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("revoking a lease outside the inventory = %v, want 403", err)
		}
		noClear(t, other.lease, err.Error())
		if err := pg.CanLogin(ctx, mine.user, mine.password); err == nil {
			t.Fatal("PostgreSQL login still works after the lease was revoked")
		}
		if err := pg.CanLogin(ctx, other.user, other.password); err != nil {
			t.Fatalf("revoking one lease hit another: %v", err)
		}
	})
	t.Run("prefix", func(t *testing.T) {
		a, b := issue(t, l, pg), issue(t, l, pg)
		cred := killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/acme"}
		_, execs := e.scoped(t, one(cred))
		plan, _, ver := lifecycle(t, execs[killswitch.ActionRevokeLeasePrefix], target(killswitch.ActionRevokeLeasePrefix, cred))
		for _, d := range []dbLogin{a, b} {
			noClear(t, strings.TrimPrefix(d.lease, "database/creds/acme/"), append(plan.Targets, plan.Summary, ver.Evidence)...)
		}
		// Three leases: a, b and "other" from the exact-lease case.
		if len(plan.Targets) != 3 || !strings.Contains(plan.Summary, "3 lease(s)") {
			t.Errorf("plan %+v, want the 3 live leases", plan)
		}
		if !strings.Contains(ver.Evidence, "no lease") {
			t.Errorf("evidence %q", ver.Evidence)
		}
		for _, d := range []dbLogin{a, b} {
			if err := pg.CanLogin(ctx, d.user, d.password); err == nil {
				t.Fatalf("PostgreSQL login of %s still works after revoke-prefix", d.user)
			}
		}
	})
	t.Run("a whole mount is refused", func(t *testing.T) {
		_, err := e.execs[killswitch.ActionRevokeLeasePrefix].Apply(ctx, target(killswitch.ActionRevokeLeasePrefix,
			killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/"}))
		if err == nil || killswitch.IsRetryable(err) {
			t.Fatalf("apply on a whole mount = %v, want a permanent refusal", err)
		}
	})
}

func TestRotateKV(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	kv := e.root.KVv2("secret")
	if _, err := kv.Put(ctx, "vendors/acme/api", map[string]any{"key": "old-1", "user": "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "vendors/acme/api", map[string]any{"key": "old-2", "user": "acme"}); err != nil {
		t.Fatal(err)
	}
	cred := killswitch.Credential{Kind: killswitch.CredKV, Path: "vendors/acme/api"}
	_, execs := e.scoped(t, one(cred))
	plan, out, _ := lifecycle(t, execs[killswitch.ActionRotateKV], target(killswitch.ActionRotateKV, cred))
	if !strings.Contains(plan.Summary, "[1 2]") || !strings.Contains(out.Detail, "version 3") {
		t.Errorf("plan %q / outcome %q", plan.Summary, out.Detail)
	}
	cur, err := kv.Get(ctx, "vendors/acme/api")
	if err != nil {
		t.Fatal(err)
	}
	if cur.VersionMetadata.Version != 3 || cur.Data["key"] == "old-2" || len(cur.Data["key"].(string)) < 40 || cur.Data["user"] == "acme" {
		t.Fatalf("current version %d = %v, want fresh random values for every key", cur.VersionMetadata.Version, cur.Data)
	}
	meta, err := kv.GetMetadata(ctx, "vendors/acme/api")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1", "2"} {
		if !meta.Versions[v].Destroyed {
			t.Errorf("version %s is not destroyed", v)
		}
	}
	old, err := kv.GetVersion(ctx, "vendors/acme/api", 2)
	if err == nil && old.Data["key"] == "old-2" {
		t.Fatal("the old value is still readable")
	}
	if meta.CustomMetadata[vault.MarkerKey] != "inc-1@3" {
		t.Errorf("marker %v", meta.CustomMetadata)
	}
}

func TestQuarantinePolicy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	token, _ := e.vendorToken(t)
	vc := e.v.Client(t)
	vc.SetToken(token)
	read := func() error { _, err := vc.KVv2("secret").Get(ctx, "vendors/acme/customers"); return err }
	if err := read(); err != nil {
		t.Fatalf("read before quarantine: %v", err)
	}
	cred := killswitch.Credential{Kind: killswitch.CredPolicy, Policy: "vendor-acme"}
	ks, execs := e.scoped(t, one(cred))
	lifecycle(t, execs[killswitch.ActionQuarantinePolicy], target(killswitch.ActionQuarantinePolicy, cred))
	var re *api.ResponseError
	if err := read(); !errors.As(err, &re) || re.StatusCode != 403 {
		t.Fatalf("read under quarantine = %v, want 403", err)
	}
	if err := vault.Restore(ctx, ks, "vendor-acme"); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if err := read(); err != nil {
		t.Fatalf("read after restore: %v", err)
	}
	if err := vault.Restore(ctx, ks, "vendor-acme"); !errors.Is(err, vault.ErrNotQuarantined) {
		t.Fatalf("second restore = %v, want ErrNotQuarantined", err)
	}
	for _, p := range []string{"root", "default"} {
		_, err := e.execs[killswitch.ActionQuarantinePolicy].Apply(ctx, target(killswitch.ActionQuarantinePolicy, killswitch.Credential{Kind: killswitch.CredPolicy, Policy: p}))
		if err == nil || killswitch.IsRetryable(err) {
			t.Errorf("quarantine %s = %v, want a permanent refusal", p, err)
		}
	}
}

func TestForbiddenIsPermanent(t *testing.T) {
	e := newEnv(t)
	_, acc := e.vendorToken(t)
	weak := e.tokenClient(t, "weak", `path "auth/token/lookup-accessor" { capabilities = ["update"] }`)
	ex := vault.New(weak)[killswitch.ActionRevokeTokenAccessor]
	_, err := ex.Apply(context.Background(), target(killswitch.ActionRevokeTokenAccessor, killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc}))
	if err == nil || killswitch.IsRetryable(err) || !errors.Is(err, killswitch.ErrPermanent) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("apply without the capability = %v, want a permanent 403", err)
	}
	noClear(t, acc, err.Error())
}

func TestCheckCapabilities(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	inv := killswitch.Inventory{"acme": {Credentials: map[string]killswitch.Credential{
		"api":    {Kind: killswitch.CredTokenAccessor, Accessor: "x"},
		"worker": {Kind: killswitch.CredAppRoleSecretID, Role: "acme", SecretIDAccessor: "y"},
		"lease":  {Kind: killswitch.CredLease, LeaseID: "database/creds/acme/z"},
		"db":     {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/acme"},
		"kv":     {Kind: killswitch.CredKV, Path: "vendors/acme/api"},
		"policy": {Kind: killswitch.CredPolicy, Policy: "vendor-acme"},
		"root":   {Kind: killswitch.CredTokenAccessor, Accessor: "r", Protected: true},
	}}}
	if root, err := vault.CheckCapabilities(ctx, e.ks, inv); err != nil || root {
		t.Fatalf("conventions policy: root=%t err=%v", root, err)
	}
	tight, _ := e.scoped(t, inv)
	if root, err := vault.CheckCapabilities(ctx, tight, inv); err != nil || root {
		t.Fatalf("generated policy: root=%t err=%v", root, err)
	}
	if root, err := vault.CheckCapabilities(ctx, e.root, inv); err != nil || !root {
		t.Fatalf("root token: root=%t err=%v, want root", root, err)
	}
	weak := e.tokenClient(t, "weak", `path "auth/token/lookup-accessor" { capabilities = ["update"] }`+"\n"+`path "sys/capabilities-self" { capabilities = ["update"] }`)
	_, err := vault.CheckCapabilities(ctx, weak, inv)
	if !errors.Is(err, vault.ErrMissingCapabilities) || !strings.Contains(err.Error(), "auth/token/revoke-accessor: needs update") ||
		!strings.Contains(err.Error(), "sys/leases/revoke-prefix/database/creds/acme: needs sudo,update") {
		t.Fatalf("weak token: %v", err)
	}
	// A conventions policy does not stretch beyond its conventions.
	other := killswitch.Inventory{"x": {Credentials: map[string]killswitch.Credential{"kv": {Kind: killswitch.CredKV, Mount: "kv", Path: "team/x"}}}}
	if _, err := vault.CheckCapabilities(ctx, e.ks, other); !errors.Is(err, vault.ErrMissingCapabilities) {
		t.Fatalf("conventions policy on kv/team/x: %v, want missing capabilities", err)
	}
}

// Two executors revoking the same token at once, without the guard rails' shared claim:
// both succeed and the token is dead. Vault cannot tell which call revoked it (both
// answer as revoked), which is why the runner takes an idempotency claim first (see
// TestRunnerIdempotencyAgainstVault: one Apply, the other instance reports it done).
func TestTwoExecutorsAtOnce(t *testing.T) {
	e := newEnv(t)
	other := vault.New(e.tokenClient(t, "killswitch", ""))[killswitch.ActionRevokeTokenAccessor]
	mine := e.execs[killswitch.ActionRevokeTokenAccessor]
	for range 10 {
		_, acc := e.vendorToken(t)
		tg := target(killswitch.ActionRevokeTokenAccessor, killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, ex := range []actions.Executor{mine, other} {
			wg.Go(func() { _, errs[i] = ex.Apply(context.Background(), tg) })
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("errors %v", errs)
		}
		if v, err := mine.Verify(context.Background(), tg); err != nil || !v.Dead {
			t.Fatalf("verify = %+v, %v", v, err)
		}
	}
}
