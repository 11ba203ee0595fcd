package vault_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
)

// scopeInventory is one credential of every kind that needs no other server: a real
// vendor token, a KV secret, a vendor policy, and made-up secret-id, lease and prefix.
func scopeInventory(accessor string) killswitch.Inventory {
	return killswitch.Inventory{"acme": {Credentials: map[string]killswitch.Credential{
		"api":    {Kind: killswitch.CredTokenAccessor, Accessor: accessor},
		"worker": {Kind: killswitch.CredAppRoleSecretID, Role: "acme", SecretIDAccessor: "5b0e4c1a-made-up"},
		"lease":  {Kind: killswitch.CredLease, LeaseID: "database/creds/acme/madeUpLease"},
		"db":     {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/acme"},
		"kv":     {Kind: killswitch.CredKV, Path: "vendors/acme/api"},
		"policy": {Kind: killswitch.CredPolicy, Policy: "vendor-acme"},
	}}}
}

// With the generated policy the token revokes what the inventory names and gets 403 on
// everything else: another token, another policy, another KV path.
func TestGeneratedPolicyKillsOnlyWhatItGuards(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	guarded, acc := e.vendorToken(t)
	other, otherAcc := e.vendorToken(t)
	inv := scopeInventory(acc)
	ks, execs := e.scoped(t, inv)

	alive := func(token string) bool {
		c := e.v.Client(t)
		c.SetToken(token)
		_, err := c.Auth().Token().LookupSelfWithContext(ctx)
		return err == nil
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var re *api.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
			t.Errorf("%s = %v, want 403", what, err)
		}
	}
	// Another vendor's token: by parameter, and by the URL form.
	_, err := ks.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": otherAcc})
	forbidden("revoke a token outside the inventory", err)
	_, err = ks.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor/"+otherAcc, nil)
	forbidden("revoke a token outside the inventory by URL", err)
	_, err = ks.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": otherAcc})
	forbidden("look up a token outside the inventory", err)
	if !alive(other) {
		t.Fatal("a token outside the inventory died")
	}
	// The executor says so, permanently, without the accessor in clear.
	_, err = execs[killswitch.ActionRevokeTokenAccessor].Apply(ctx, target(killswitch.ActionRevokeTokenAccessor,
		killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: otherAcc}))
	if err == nil || !errors.Is(err, killswitch.ErrPermanent) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("executor on a token outside the inventory = %v, want a permanent 403", err)
	}
	noClear(t, otherAcc, err.Error())
	// Another policy, another KV path, another lease, token creation.
	if err := e.root.Sys().PutPolicyWithContext(ctx, "vendor-other", `path "secret/data/other" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	forbidden("rewrite a policy outside the inventory", ks.Sys().PutPolicyWithContext(ctx, "vendor-other", `path "*" { capabilities = ["sudo", "update"] }`))
	_, err = ks.KVv2("secret").Get(ctx, "vendors/acme/customers")
	forbidden("read another KV path", err)
	_, err = ks.Logical().WriteWithContext(ctx, "sys/leases/revoke", map[string]any{"lease_id": "database/creds/acme/another"})
	forbidden("revoke a lease outside the inventory", err)
	_, err = ks.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"vendor-acme"}})
	forbidden("create a token", err)

	// The guarded token dies.
	tg := target(killswitch.ActionRevokeTokenAccessor, killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc})
	if _, err := execs[killswitch.ActionRevokeTokenAccessor].Apply(ctx, tg); err != nil {
		t.Fatalf("revoke the inventory's token: %v", err)
	}
	if v, err := execs[killswitch.ActionRevokeTokenAccessor].Verify(ctx, tg); err != nil || !v.Dead {
		t.Fatalf("verify = %+v, %v", v, err)
	}
	if alive(guarded) || !alive(other) {
		t.Fatalf("guarded alive=%t, other alive=%t; want only the guarded one dead", alive(guarded), alive(other))
	}
}

func TestCheckScope(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, acc := e.vendorToken(t)
	inv := scopeInventory(acc)
	policy, err := vault.PolicyFor(inv)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.root.Sys().PutPolicyWithContext(ctx, "ks-generated", policy); err != nil {
		t.Fatal(err)
	}
	// token returns a client holding the generated policy and, when extra is set, a
	// second policy with those rules.
	token := func(t *testing.T, extra string) *api.Client {
		t.Helper()
		policies := []string{"ks-generated"}
		if extra != "" {
			if err := e.root.Sys().PutPolicyWithContext(ctx, "ks-extra-"+t.Name()[len("TestCheckScope/"):], extra); err != nil {
				t.Fatal(err)
			}
			policies = append(policies, "ks-extra-"+t.Name()[len("TestCheckScope/"):])
		}
		sec, err := e.root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: policies, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		c := e.v.Client(t)
		c.SetToken(sec.Auth.ClientToken)
		return c
	}
	tests := []struct {
		name   string
		client func(t *testing.T) *api.Client
		root   bool
		excess []string // substrings, each of some Excess line; nil: scoped
	}{
		{"generated", func(t *testing.T) *api.Client { return token(t, "") }, false, nil},
		{"generated-no-default", func(t *testing.T) *api.Client {
			sec, err := e.root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"ks-generated"}, NoDefaultPolicy: true, TTL: "1h"})
			if err != nil {
				t.Fatal(err)
			}
			c := e.v.Client(t)
			c.SetToken(sec.Auth.ClientToken)
			return c
		}, false, nil},
		{"root", func(*testing.T) *api.Client { return e.root }, true, nil},
		{"star", func(t *testing.T) *api.Client {
			return token(t, `path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }`)
		}, false, []string{"auth/token/create: ", "<probe>: ", "sys/policies/acl/<probe>: ", "auth/token/revoke-accessor/<probe>: "}},
		{"token-creation", func(t *testing.T) *api.Client {
			return token(t, `path "auth/token/create" { capabilities = ["update"] }`)
		}, false, []string{"auth/token/create: update (outside the inventory's policy)"}},
		{"every-vendor-policy", func(t *testing.T) *api.Client {
			return token(t, `path "sys/policies/acl/vendor-*" { capabilities = ["read", "update"] }`)
		}, false, []string{"sys/policies/acl/vendor-acme-<probe>: read, update"}},
		{"other-kv", func(t *testing.T) *api.Client {
			return token(t, `path "secret/data/vendors/*" { capabilities = ["read"] }`)
		}, false, []string{"secret/data/vendors/acme/<probe>: read", "secret/data/vendors/acme/api-<probe>: read"}},
		{"more-on-a-granted-path", func(t *testing.T) *api.Client {
			return token(t, `path "sys/policies/acl/vendor-acme" { capabilities = ["delete"] }`)
		}, false, []string{"sys/policies/acl/vendor-acme: delete (beyond the policy's read, update)"}},
		{"any-role-secret-ids", func(t *testing.T) *api.Client {
			return token(t, `path "auth/approle/role/+/secret-id" { capabilities = ["update"] }`)
		}, false, []string{"auth/approle/role/acme/secret-id: update"}},
		{"conventions", func(t *testing.T) *api.Client { return e.ks }, false, []string{
			"auth/token/revoke-accessor: accepts any token's accessor", "auth/token/lookup-accessor: accepts any token's accessor",
			"sys/leases/revoke: accepts any lease ID", "auth/approle/role/acme/secret-id-accessor/destroy: accepts any secret-id accessor",
			"sys/policies/acl/vendor-acme-<probe>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.client(t)
			if _, err := vault.CheckCapabilities(ctx, c, inv); err != nil {
				t.Fatalf("capabilities: %v", err)
			}
			s, err := vault.CheckScope(ctx, c, inv)
			if err != nil {
				t.Fatal(err)
			}
			if s.Root != tt.root || s.Broad() != (tt.root || tt.excess != nil) {
				t.Fatalf("scope %+v, want root=%t excess=%v", s, tt.root, tt.excess)
			}
			all := strings.Join(s.Excess, "\n")
			for _, want := range tt.excess {
				if !strings.Contains(all, want) {
					t.Errorf("excess lacks %q:\n%s", want, all)
				}
			}
			switch err := s.Err(); {
			case tt.root && !errors.Is(err, vault.ErrRootToken),
				!tt.root && tt.excess != nil && !errors.Is(err, vault.ErrBroadToken),
				!s.Broad() && err != nil:
				t.Errorf("Err() = %v", err)
			}
			if strings.Contains(all, acc) || strings.Contains(all, "killswitch-probe-") {
				t.Errorf("the excess shows an accessor or a raw probe name:\n%s", all)
			}
		})
	}
	// Probing changed nothing: the guarded token still lives.
	if _, err := e.root.Auth().Token().LookupAccessorWithContext(ctx, acc); err != nil {
		t.Fatalf("the inventory's token after probing: %v", err)
	}
}
