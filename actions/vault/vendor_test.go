package vault_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// vendorTargets returns the targets of a kill of the whole vendor, as kill-vendor
// builds them: the inventory's credentials (protected ones left out) and what
// Enumerate adds, the entity first (the one-shot cut, verified while the inventory's
// token that proves it still exists), then by name.
func vendorTargets(incident, name string, v killswitch.Vendor, extra map[string]killswitch.Credential) []actions.Target {
	all := maps.Clone(extra)
	for n, c := range v.Credentials {
		if !c.Protected {
			all[n] = c
		}
	}
	names := slices.Sorted(maps.Keys(all))
	slices.SortStableFunc(names, func(a, b string) int {
		ea, eb := all[a].Kind == killswitch.CredEntity, all[b].Kind == killswitch.CredEntity
		switch {
		case ea && !eb:
			return -1
		case eb && !ea:
			return 1
		}
		return 0
	})
	out := make([]actions.Target, 0, len(names))
	for _, n := range names {
		c := all[n]
		out = append(out, actions.Target{Incident: incident, Vendor: name, Credential: n, Identity: c,
			Action: playbooks.Action{Type: c.Kind.Action(), Credential: n}, Fingerprint: fp})
	}
	return out
}

// killed is one kill of a vendor: its targets, plans and times.
type killed struct {
	targets       []actions.Target
	plans         []actions.Plan
	evidence      []string
	each          []time.Duration // apply+verify of each target
	plan, applied time.Duration
}

// killVendor enumerates, plans, applies and verifies every credential of the vendor
// through the executors, as the runner would.
func killVendor(tb testing.TB, ks *api.Client, execs actions.Registry, incident, name string, v killswitch.Vendor) killed {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var k killed
	start := time.Now()
	extra, err := vault.Enumerate(ctx, ks, name, v, fp)
	if err != nil {
		tb.Fatalf("enumerate: %v", err)
	}
	k.targets = vendorTargets(incident, name, v, extra)
	for _, tg := range k.targets {
		p, err := execs[tg.Action.Type].Plan(ctx, tg)
		if err != nil || p.AlreadyGone {
			tb.Fatalf("plan %s: %+v, %v", tg.Credential, p, err)
		}
		k.plans = append(k.plans, p)
	}
	k.plan = time.Since(start)
	start = time.Now()
	for _, tg := range k.targets {
		one := time.Now()
		ex := execs[tg.Action.Type]
		if out, err := ex.Apply(ctx, tg); err != nil || out.AlreadyDone {
			tb.Fatalf("apply %s: %+v, %v", tg.Credential, out, err)
		}
		ver, err := ex.Verify(ctx, tg)
		if err != nil || !ver.Dead {
			tb.Fatalf("verify %s: %+v, %v", tg.Credential, ver, err)
		}
		k.evidence = append(k.evidence, ver.Evidence)
		k.each = append(k.each, time.Since(one))
	}
	k.applied = time.Since(start)
	return k
}

// restoreVendor runs every restore primitive for the vendor's holdings and policy.
func restoreVendor(tb testing.TB, ks *api.Client, incident string, v killswitch.Vendor, proof string) []vault.Step {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var steps []vault.Step
	add := func(s vault.Step, err error) {
		tb.Helper()
		if err != nil || !s.Verified {
			tb.Fatalf("%s: %+v, %v", s.What, s, err)
		}
		steps = append(steps, s)
	}
	add(vault.EnableEntity(ctx, ks, fp, v.Vault.Entity, proof))
	for _, c := range slices.Sorted(maps.Keys(v.Credentials)) {
		if p := v.Credentials[c]; p.Kind == killswitch.CredPolicy {
			add(vault.RestorePolicy(ctx, ks, p.Policy))
		}
	}
	for _, r := range v.Vault.AppRoles {
		add(vault.ReissueSecretID(ctx, ks, fp, r, incident, time.Hour))
	}
	for _, kv := range v.Vault.KV {
		add(vault.ReissueKV(ctx, ks, fp, kv, incident, time.Hour))
	}
	return steps
}

// unwrap unwraps a handover the way the vendor would: with the wrapping token alone.
func (e *env) unwrap(t *testing.T, h *vault.Handover) map[string]any {
	t.Helper()
	if h == nil || h.Token == "" {
		t.Fatal("no handover")
	}
	c := e.v.Client(t)
	c.SetToken(h.Token)
	s, err := c.Logical().Unwrap("")
	if err != nil || s == nil {
		t.Fatalf("unwrap: %v", err)
	}
	return s.Data
}

func TestKillAndRestoreVendor(t *testing.T) {
	pg := testharness.Postgres(t)
	e := newEnv(t)
	ctx := context.Background()
	mailer := testharness.SeedVendor(t, e.root, pg, "mailer")
	other := testharness.SeedVendor(t, e.root, pg, "other")
	inv := killswitch.Inventory{"mailer": mailer.Vendor, "other": other.Vendor}
	ks, execs := e.scoped(t, inv)
	if root, err := vault.CheckCapabilities(ctx, ks, inv); err != nil || root {
		t.Fatalf("capabilities of the generated policy: root=%t %v", root, err)
	}
	if s, err := vault.CheckScope(ctx, ks, inv); err != nil || s.Broad() {
		t.Fatalf("scope of the generated policy: %+v %v", s, err)
	}
	untouched := func(when string) {
		t.Helper()
		if err := other.Untouched(other.State(t)); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	if err := mailer.Untouched(mailer.State(t)); err != nil {
		t.Fatal(err)
	}
	untouched("seeded")

	// Enumerate: what the inventory does not list.
	extra, err := vault.Enumerate(ctx, ks, "mailer", mailer.Vendor, fp)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[killswitch.CredentialKind]int{}
	for _, c := range extra {
		kinds[c.Kind]++
	}
	want := map[killswitch.CredentialKind]int{killswitch.CredAppRoleSecretID: 2, killswitch.CredLeasePrefix: 1, killswitch.CredKV: 2, killswitch.CredEntity: 1}
	if !maps.Equal(kinds, want) {
		t.Fatalf("enumerated %v, want %v: %v", kinds, want, slices.Sorted(maps.Keys(extra)))
	}
	if ent := extra["entity:mailer"]; ent.Accessor != mailer.Tokens[0].Accessor {
		t.Fatalf("the entity's proof accessor is not the inventory's token of the entity")
	}
	for _, sid := range mailer.SecretIDs {
		if _, ok := extra["approle:mailer:"+fp.Of(sid.Accessor)]; !ok {
			t.Errorf("secret-id %s not enumerated: %v", fp.Of(sid.Accessor), slices.Sorted(maps.Keys(extra)))
		}
	}
	noClear(t, mailer.SecretIDs[0].Accessor, slices.Collect(maps.Keys(extra))...)
	noClear(t, mailer.SecretIDs[1].Accessor, slices.Collect(maps.Keys(extra))...)

	// Kill.
	k := killVendor(t, ks, execs, "inc-kill", "mailer", mailer.Vendor)
	t.Logf("kill of a vendor holding %d tokens, %d secret-ids, %d leases, %d KV paths: %d targets; plan (with enumeration) %s, apply+verify %s",
		len(mailer.Tokens), len(mailer.SecretIDs), len(mailer.Leases), len(mailer.KV), len(k.targets), k.plan.Round(time.Microsecond), k.applied.Round(time.Microsecond))
	var texts []string
	for i, p := range k.plans {
		texts = append(texts, p.Summary, k.evidence[i])
		texts = append(texts, p.Targets...)
		t.Logf("  %-40s apply+verify %8s  %s", k.targets[i].Credential, k.each[i].Round(time.Microsecond), p.Summary)
	}
	for _, s := range []string{mailer.Tokens[0].Accessor, mailer.SecretIDs[0].Accessor, mailer.SecretIDs[1].Accessor, mailer.EntityID} {
		noClear(t, s, texts...)
	}
	if !strings.Contains(k.evidence[0], `answers "invalid token"`) {
		t.Errorf("the entity's verification does not prove the refusal with a token: %s", k.evidence[0])
	}
	for _, le := range mailer.Leases {
		noClear(t, le.LeaseID, texts...)
	}
	st := mailer.State(t)
	if err := mailer.Killed(st); err != nil {
		t.Fatal(err)
	}
	if st.PolicyText == mailer.PolicyText {
		t.Fatal("the vendor's policy is not quarantined")
	}
	untouched("after the kill")
	// A second kill finds nothing left.
	for _, tg := range k.targets {
		if p, err := execs[tg.Action.Type].Plan(ctx, tg); err != nil || !p.AlreadyGone {
			t.Errorf("plan after the kill %s: %+v, %v", tg.Credential, p, err)
		}
	}

	// Restore.
	start := time.Now()
	steps := restoreVendor(t, ks, "inc-kill", mailer.Vendor, extra["entity:mailer"].Accessor)
	t.Logf("restore (entity, policy, 1 secret-id, 2 KV versions, each verified): %s", time.Since(start).Round(time.Microsecond))
	for _, s := range steps {
		t.Logf("  %-45s %s", s.What, s.Evidence)
		if s.Handover != nil && (strings.Contains(s.Evidence, s.Handover.Token) || strings.Contains(s.Handover.String(), s.Handover.Token)) {
			t.Errorf("%s shows the wrapping token", s.What)
		}
	}
	st = mailer.State(t)
	for i, err := range st.Tokens {
		switch {
		case mailer.Tokens[i].Listed && err == nil:
			t.Errorf("token %d was revoked and works again", i)
		case !mailer.Tokens[i].Listed && err != nil:
			t.Errorf("token %d (%s) of the re-enabled entity fails: %v", i, mailer.Tokens[i].Via, err)
		}
	}
	for i, err := range st.SecretIDs {
		if err == nil {
			t.Errorf("the destroyed secret-id %d logs in again", i)
		}
	}
	if st.PolicyText != mailer.PolicyText || st.EntityDisabled {
		t.Fatalf("policy restored=%t, entity disabled=%t", st.PolicyText == mailer.PolicyText, st.EntityDisabled)
	}
	for _, s := range steps {
		switch {
		case strings.HasPrefix(s.What, "issue a new secret-id"):
			sid, _ := e.unwrap(t, s.Handover)["secret_id"].(string)
			if err := mailer.Login(t, sid); err != nil {
				t.Errorf("login with the re-issued secret-id: %v", err)
			}
		case strings.HasPrefix(s.What, "issue a new version"):
			got := e.unwrap(t, s.Handover)
			path := strings.TrimPrefix(s.What, "issue a new version of secret/")
			cur, err := e.root.KVv2("secret").Get(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			if cur.VersionMetadata.Version != s.Version || !reflect.DeepEqual(cur.Data, got) || len(got) != 2 {
				t.Errorf("%s: unwrapped %d keys, current version %d (step %d) equal=%t", path, len(got), cur.VersionMetadata.Version, s.Version, reflect.DeepEqual(cur.Data, got))
			}
		}
	}
	// Restore again: nothing more is done; the KV value is handed over again.
	again := restoreVendor(t, ks, "inc-kill", mailer.Vendor, extra["entity:mailer"].Accessor)
	for i, s := range again {
		if !s.AlreadyDone || s.Version != steps[i].Version {
			t.Errorf("second restore %s: %+v", s.What, s)
		}
	}
	untouched("after the restore")
}

// The generated policy cuts the vendor it names and nothing of another vendor.
func TestVendorPolicyScope(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	mailer := testharness.SeedVendor(t, e.root, nil, "mailer")
	other := testharness.SeedVendor(t, e.root, nil, "other")
	inv := killswitch.Inventory{"mailer": mailer.Vendor}
	ks, execs := e.scoped(t, inv)
	if root, err := vault.CheckCapabilities(ctx, ks, inv); err != nil || root {
		t.Fatalf("capabilities: root=%t %v", root, err)
	}
	if s, err := vault.CheckScope(ctx, ks, inv); err != nil || s.Broad() {
		t.Fatalf("scope: %+v %v", s, err)
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var re *api.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
			t.Errorf("%s = %v, want 403", what, err)
		}
	}
	l := ks.Logical()
	_, err := l.WriteWithContext(ctx, "identity/entity/name/other", map[string]any{"disabled": true})
	forbidden("disable another vendor's entity", err)
	_, err = l.WriteWithContext(ctx, "identity/entity/name/mailer", map[string]any{"policies": []string{"root"}})
	forbidden("give the vendor's entity a policy", err)
	_, err = l.WriteWithContext(ctx, "identity/entity/name/newcomer", map[string]any{"disabled": true})
	forbidden("create an entity", err)
	_, err = l.WriteWithContext(ctx, "auth/approle/role/other/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": other.SecretIDs[0].Accessor})
	forbidden("destroy another role's secret-id", err)
	// Through the vendor's own role path, Vault itself refuses another role's accessor.
	_, err = l.WriteWithContext(ctx, "auth/approle/role/mailer/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": other.SecretIDs[0].Accessor})
	forbidden("destroy another role's secret-id through the vendor's role", err)
	_, err = l.WriteWithContext(ctx, "auth/approle/role/other/secret-id", nil)
	forbidden("issue a secret-id of another role", err)
	_, err = l.WriteWithContext(ctx, "auth/approle/role/mailer/secret-id", map[string]any{"num_uses": 0, "token_bound_cidrs": "0.0.0.0/0"})
	forbidden("issue a secret-id with parameters beyond metadata", err)
	_, err = l.WriteWithContext(ctx, "sys/capabilities-accessor", map[string]any{"accessor": other.Tokens[0].Accessor, "paths": []string{"sys"}})
	forbidden("ask about another vendor's token", err)
	_, err = ks.KVv2("secret").Get(ctx, other.KV[0].Path)
	forbidden("read another vendor's KV", err)
	// The executors say so, permanently.
	tg := func(c killswitch.Credential) actions.Target {
		return actions.Target{Incident: "inc", Vendor: "other", Credential: "x", Identity: c, Action: playbooks.Action{Type: c.Kind.Action()}, Fingerprint: fp}
	}
	if _, err := execs[killswitch.ActionDisableEntity].Apply(ctx, tg(killswitch.Credential{Kind: killswitch.CredEntity, Entity: "other"})); !errors.Is(err, killswitch.ErrPermanent) || !strings.Contains(err.Error(), "403") {
		t.Errorf("disable another entity = %v, want a permanent 403", err)
	}
	if _, err := execs[killswitch.ActionDestroySecretID].Apply(ctx, tg(killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "other", SecretIDAccessor: other.SecretIDs[1].Accessor})); !errors.Is(err, killswitch.ErrPermanent) {
		t.Errorf("destroy another role's secret-id = %v, want permanent", err)
	}
	if _, err := vault.Enumerate(ctx, ks, "other", other.Vendor, fp); !errors.Is(err, killswitch.ErrPermanent) || !strings.Contains(err.Error(), "auth/approle/role/other/secret-id") {
		t.Errorf("enumerate another vendor = %v, want a permanent 403 naming the path", err)
	}
	if err := other.Untouched(other.State(t)); err != nil {
		t.Fatal(err)
	}
	// A token that can do more on the vendor's holdings is found out, changing nothing.
	policy, err := vault.PolicyFor(inv)
	if err != nil {
		t.Fatal(err)
	}
	// Vault merges a path's allowed_parameters across policies and keeps the pins, so a
	// token that is not pinned holds the generated policy without them.
	unpinned := regexp.MustCompile(`(?m)^  allowed_parameters = \{\n(?:    .*\n)*  \}\n`).ReplaceAllString(policy, "")
	broad := []struct{ policy, excess string }{
		{unpinned, "identity/entity/name/mailer: accepts any field of the entity"},
		{unpinned, "auth/approle/role/mailer/secret-id: accepts secret-id parameters other than metadata"},
		{unpinned, "sys/capabilities-accessor: accepts any token's accessor"},
		{policy + `path "identity/entity/name/*" { capabilities = ["update"] }`, "identity/entity/name/<probe>: update"},
		{policy + `path "auth/approle/role/mailer/role-id" { capabilities = ["read"] }`, "auth/approle/role/mailer/role-id: read"},
	}
	for i, tt := range broad {
		c := e.tokenClient(t, fmt.Sprintf("ks-broad-%d", i), tt.policy)
		s, err := vault.CheckScope(ctx, c, inv)
		if err != nil {
			t.Fatal(err)
		}
		if all := strings.Join(s.Excess, "\n"); !strings.Contains(all, tt.excess) {
			t.Errorf("excess lacks %q:\n%s", tt.excess, all)
		}
	}
	if err := mailer.Untouched(mailer.State(t)); err != nil {
		t.Fatalf("probing changed the vendor: %v", err)
	}
	// And the vendor it names is cut.
	killVendor(t, ks, execs, "inc-scope", "mailer", mailer.Vendor)
	if err := mailer.Killed(mailer.State(t)); err != nil {
		t.Fatal(err)
	}
	if err := other.Untouched(other.State(t)); err != nil {
		t.Fatal(err)
	}
}

func TestDisableEntity(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	acme := testharness.SeedVendor(t, e.root, nil, "acme")
	_, strangerAcc := e.vendorToken(t) // a token of no entity
	cred := func(acc string) killswitch.Credential {
		return killswitch.Credential{Kind: killswitch.CredEntity, Entity: "acme", Accessor: acc}
	}
	_, execs := e.scoped(t, one(cred(acme.Tokens[0].Accessor)))
	ex := execs[killswitch.ActionDisableEntity]
	plan, out, ver := lifecycle(t, ex, target(killswitch.ActionDisableEntity, cred(acme.Tokens[0].Accessor)))
	if !strings.Contains(plan.Summary, "2 alias(es) on auth/approle/, auth/token/") || !strings.Contains(plan.Summary, fp.Of(acme.EntityID)) {
		t.Errorf("plan %q", plan.Summary)
	}
	if !strings.Contains(ver.Evidence, `answers "invalid token"`) {
		t.Errorf("evidence %q", ver.Evidence)
	}
	noClear(t, acme.Tokens[0].Accessor, plan.Summary, out.Detail, ver.Evidence)
	noClear(t, acme.EntityID, plan.Summary, out.Detail, ver.Evidence)
	st := acme.State(t)
	for i, err := range st.Tokens {
		if err == nil {
			t.Errorf("token %d (%s) works with its entity disabled", i, acme.Tokens[i].Via)
		}
	}
	for i, err := range st.SecretIDs {
		if err == nil {
			t.Errorf("secret-id %d logs in with the entity disabled", i)
		}
	}

	t.Run("verify", func(t *testing.T) {
		rootExecs := vault.New(e.root)
		tests := []struct {
			name     string
			accessor string
			dead     bool
			evidence string
		}{
			{"no accessor", "", true, "no token of the entity in the inventory"},
			{"a token of the entity", acme.Tokens[1].Accessor, true, `answers "invalid token"`},
			{"a token of no entity", strangerAcc, true, "is not a token of the entity"},
			{"a revoked token", "revoked", true, "no longer exists"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				acc := tt.accessor
				if acc == "revoked" {
					_, acc = e.vendorToken(t)
					if err := e.root.Auth().Token().RevokeAccessorWithContext(ctx, acc); err != nil {
						t.Fatal(err)
					}
				}
				v, err := rootExecs[killswitch.ActionDisableEntity].Verify(ctx, target(killswitch.ActionDisableEntity, cred(acc)))
				if err != nil || v.Dead != tt.dead || !strings.Contains(v.Evidence, tt.evidence) {
					t.Fatalf("verify = %+v, %v; want dead=%t and %q", v, err, tt.dead, tt.evidence)
				}
				if acc != "" {
					noClear(t, acc, v.Evidence)
				}
			})
		}
	})

	t.Run("restore", func(t *testing.T) {
		ks, _ := e.scoped(t, one(cred(acme.Tokens[1].Accessor)))
		s, err := vault.EnableEntity(ctx, ks, fp, "acme", acme.Tokens[1].Accessor)
		if err != nil || !s.Verified || s.AlreadyDone || !strings.Contains(s.Evidence, "Vault accepts it") {
			t.Fatalf("enable = %+v, %v", s, err)
		}
		if err := acme.Untouched(acme.State(t)); err != nil {
			t.Fatal(err)
		}
		if s, err := vault.EnableEntity(ctx, ks, fp, "acme", ""); err != nil || !s.AlreadyDone || !s.Verified {
			t.Fatalf("enable again = %+v, %v", s, err)
		}
		// Verify on an enabled entity reports it alive.
		if v, err := execs[killswitch.ActionDisableEntity].Verify(ctx, target(killswitch.ActionDisableEntity, cred(""))); err != nil || v.Dead {
			t.Fatalf("verify an enabled entity = %+v, %v", v, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		rootExec := vault.New(e.root)[killswitch.ActionDisableEntity]
		tests := []struct {
			name   string
			entity string
			is     error
		}{
			{"missing entity", "nobody", vault.ErrNoEntity},
			{"empty name", "", killswitch.ErrPermanent},
			{"a path, not a name", "acme/../x", killswitch.ErrPermanent},
			{"a glob", "acme*", killswitch.ErrPermanent},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tg := target(killswitch.ActionDisableEntity, killswitch.Credential{Kind: killswitch.CredEntity, Entity: tt.entity})
				_, perr := rootExec.Plan(ctx, tg)
				_, aerr := rootExec.Apply(ctx, tg)
				_, verr := rootExec.Verify(ctx, tg)
				for _, err := range []error{perr, aerr, verr} {
					if !errors.Is(err, tt.is) || !errors.Is(err, killswitch.ErrPermanent) {
						t.Fatalf("plan/apply/verify = %v / %v / %v, want permanent %v", perr, aerr, verr, tt.is)
					}
				}
			})
		}
		// Apply never created the missing entity.
		if s, err := e.root.Logical().ReadWithContext(ctx, "identity/entity/name/nobody"); err != nil || s != nil {
			t.Fatalf("the missing entity exists now: %v, %v", s, err)
		}
	})
}

func TestEnumerate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	acme := testharness.SeedVendor(t, e.root, nil, "acme")
	if _, err := e.root.Logical().WriteWithContext(ctx, "auth/approle/role/empty", map[string]any{"token_policies": "default"}); err != nil {
		t.Fatal(err)
	}
	with := func(f func(v *killswitch.Vendor)) killswitch.Vendor {
		v := acme.Vendor
		v.Credentials = maps.Clone(v.Credentials)
		v.Vault.AppRoles = slices.Clone(v.Vault.AppRoles)
		f(&v)
		return v
	}
	sid0, sid1 := "approle:acme:"+fp.Of(acme.SecretIDs[0].Accessor), "approle:acme:"+fp.Of(acme.SecretIDs[1].Accessor)
	tests := []struct {
		name  string
		v     killswitch.Vendor
		names []string
		proof string // the entity's Accessor
		err   error
	}{
		{"seeded", acme.Vendor, []string{sid0, sid1, "entity:acme", "kv:secret/vendors/acme/api", "kv:secret/vendors/acme/db"}, acme.Tokens[0].Accessor, nil},
		{"listed secret-id keeps its own name", with(func(v *killswitch.Vendor) {
			v.Credentials["worker"] = killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "acme", SecretIDAccessor: acme.SecretIDs[0].Accessor}
		}), []string{sid1, "entity:acme", "kv:secret/vendors/acme/api", "kv:secret/vendors/acme/db"}, acme.Tokens[0].Accessor, nil},
		{"protected secret-id and kv are left out", with(func(v *killswitch.Vendor) {
			v.Credentials["glass"] = killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Mount: "approle/", Role: "acme", SecretIDAccessor: acme.SecretIDs[1].Accessor, Protected: true}
			v.Credentials["kv"] = killswitch.Credential{Kind: killswitch.CredKV, Path: "/vendors/acme/db", Protected: true}
		}), []string{sid0, "entity:acme", "kv:secret/vendors/acme/api"}, acme.Tokens[0].Accessor, nil},
		{"missing and empty roles add nothing", with(func(v *killswitch.Vendor) {
			v.Vault.AppRoles = []killswitch.AppRoleRef{{Role: "empty"}, {Role: "ghost"}}
			v.Vault.KV = nil
		}), []string{"entity:acme"}, acme.Tokens[0].Accessor, nil},
		{"no token of the entity in the inventory", with(func(v *killswitch.Vendor) {
			delete(v.Credentials, "acme-api")
			v.Vault = killswitch.Holdings{Entity: "acme", LeasePrefixes: []string{"database/creds/acme", ""}}
		}), []string{"entity:acme", "leases:database/creds/acme"}, "", nil},
		{"a protected token of the entity", with(func(v *killswitch.Vendor) {
			v.Credentials["acme-glass"] = killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acme.Tokens[2].Accessor, Protected: true}
		}), nil, "", vault.ErrProtectedHolding},
		{"a protected lease under a prefix", with(func(v *killswitch.Vendor) {
			v.Credentials["report"] = killswitch.Credential{Kind: killswitch.CredLease, LeaseID: "database/creds/acme/L1", Protected: true}
			v.Vault.LeasePrefixes = []string{"database/creds/acme"}
		}), nil, "", vault.ErrProtectedHolding},
		{"a missing entity is still planned", with(func(v *killswitch.Vendor) {
			v.Vault = killswitch.Holdings{Entity: "ghost"}
		}), []string{"entity:ghost"}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := killswitch.Inventory{"acme": tt.v}
			ks, _ := e.scoped(t, inv)
			got, err := vault.Enumerate(ctx, ks, "acme", tt.v, fp)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || !errors.Is(err, killswitch.ErrPermanent) {
					t.Fatalf("err = %v, want permanent %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, slices.Sorted(slices.Values(tt.names))) {
				t.Fatalf("names %v, want %v", names, tt.names)
			}
			for n, c := range got {
				if c.Kind == killswitch.CredEntity && c.Accessor != tt.proof {
					t.Errorf("%s: proof accessor %s, want %s", n, fp.Of(c.Accessor), fp.Of(tt.proof))
				}
			}
			// Deterministic.
			again, err := vault.Enumerate(ctx, ks, "acme", tt.v, fp)
			if err != nil || !maps.Equal(got, again) {
				t.Fatalf("a second enumeration differs: %v", err)
			}
		})
	}
}

func TestRequirementsHoldings(t *testing.T) {
	inv := killswitch.Inventory{"mailer": {
		Credentials: map[string]killswitch.Credential{
			"api":   {Kind: killswitch.CredTokenAccessor, Accessor: "accA"},
			"glass": {Kind: killswitch.CredTokenAccessor, Accessor: "accP", Protected: true},
			"w":     {Kind: killswitch.CredAppRoleSecretID, Role: "mailer", SecretIDAccessor: "s1"},
		},
		Vault: killswitch.Holdings{
			Entity:        "mailer",
			AppRoles:      []killswitch.AppRoleRef{{Role: "mailer"}, {Mount: "approle-eu", Role: "mailer-eu"}},
			LeasePrefixes: []string{"database/creds/mailer/"},
			KV:            []killswitch.KVRef{{Path: "vendors/mailer/api"}, {Mount: "kv", Path: "team/mailer"}},
		},
	}}
	reqs := map[string]vault.Requirement{}
	for _, r := range vault.Requirements(inv) {
		reqs[r.Path] = r
	}
	tests := []struct {
		path   string
		caps   []string
		params map[string][]string
	}{
		{"identity/entity/name/mailer", []string{"read", "update"}, map[string][]string{"disabled": {}}},
		{"auth/token/lookup-accessor", []string{"update"}, map[string][]string{"accessor": {"accA", "accP"}}},
		{"auth/token/revoke-accessor", []string{"update"}, map[string][]string{"accessor": {"accA"}}},
		{"sys/capabilities-accessor", []string{"update"}, map[string][]string{"accessor": {"accA"}, "paths": {}}},
		{"auth/approle/role/mailer/secret-id", []string{"list", "update"}, map[string][]string{"metadata": {}}},
		{"auth/approle/role/mailer/secret-id-accessor/destroy", []string{"update"}, map[string][]string{"secret_id_accessor": {}}},
		{"auth/approle/role/mailer/secret-id-accessor/lookup", []string{"update"}, map[string][]string{"secret_id_accessor": {}}},
		{"auth/approle-eu/role/mailer-eu/secret-id", []string{"list", "update"}, map[string][]string{"metadata": {}}},
		{"sys/leases/lookup/database/creds/mailer/", []string{"list", "sudo"}, nil},
		{"sys/leases/revoke-prefix/database/creds/mailer", []string{"sudo", "update"}, map[string][]string{"sync": {}}},
		{"secret/data/vendors/mailer/api", []string{"read", "update"}, nil},
		{"kv/metadata/team/mailer", []string{"patch", "read"}, nil},
		{"kv/destroy/team/mailer", []string{"update"}, nil},
		{"sys/wrapping/wrap", []string{"update"}, nil},
		{"sys/wrapping/lookup", []string{"update"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r, ok := reqs[tt.path]
			if !ok {
				t.Fatalf("no requirement on %s", tt.path)
			}
			if !slices.Equal(r.Capabilities, tt.caps) || !reflect.DeepEqual(r.Params, tt.params) {
				t.Fatalf("%s: caps %v params %v, want %v %v", tt.path, r.Capabilities, r.Params, tt.caps, tt.params)
			}
		})
	}
	if _, err := vault.PolicyFor(inv); err != nil {
		t.Fatal(err)
	}
	bad := killswitch.Inventory{"x": {Vault: killswitch.Holdings{Entity: "x y"}}}
	if _, err := vault.PolicyFor(bad); !errors.Is(err, vault.ErrUnsafePolicyValue) {
		t.Fatalf("an entity name with a space: %v", err)
	}
}

// BenchmarkKillVendor measures a kill of a whole seeded vendor (3 tokens of its
// entity, 2 secret-ids, 5 database leases, 2 KV paths, a policy): enumerate, plan,
// apply and verify every credential through the executors on the generated policy.
func BenchmarkKillVendor(b *testing.B) {
	benchVendor(b, false)
}

// BenchmarkRestoreVendor measures the restore of a killed vendor: entity, policy, a
// wrapped secret-id and two wrapped KV versions, each verified.
func BenchmarkRestoreVendor(b *testing.B) {
	benchVendor(b, true)
}

func benchVendor(b *testing.B, restore bool) {
	pg := testharness.Postgres(b)
	e := newEnv(b)
	i := 0
	for b.Loop() {
		b.StopTimer()
		name := fmt.Sprintf("bench%d", i)
		i++
		s := testharness.SeedVendor(b, e.root, pg, name)
		ks, execs := e.scoped(b, killswitch.Inventory{name: s.Vendor})
		if restore {
			k := killVendor(b, ks, execs, "inc-"+name, name, s.Vendor)
			b.StartTimer()
			restoreVendor(b, ks, "inc-"+name, s.Vendor, k.targets[0].Identity.Accessor)
		} else {
			b.StartTimer()
			killVendor(b, ks, execs, "inc-"+name, name, s.Vendor)
		}
	}
}
