package demo

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
)

// credential is a vendor credential the demo created, with its secret (the demo plays
// the attacker who stole it).
type credential struct {
	vendor, cred, token string
}

// seeded is what seedVault created.
type seeded struct {
	inventory killswitch.Inventory
	victim    *credential
}

func (s *seeded) vendorNames() []string {
	var out []string
	for v := range s.inventory {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

func (s *seeded) describe(vendor string) []string {
	var out []string
	for name, c := range s.inventory[vendor].Credentials {
		d := name + " (" + string(c.Kind)
		if c.Protected {
			d += ", protected"
		}
		out = append(out, d+")")
	}
	slices.Sort(out)
	return out
}

// seedVault gives every vendor of the inventory real Vault credentials: a policy that
// reads the vendor's secrets, a secret, and a token per token credential; the inventory
// returned holds the real accessors. The victim is the vendor "mailer"'s first key.
func seedVault(ctx context.Context, root *api.Client, inv killswitch.Inventory) (*seeded, error) {
	out := &seeded{inventory: killswitch.Inventory{}}
	vendors := slices.Sorted(maps.Keys(inv))
	for _, v := range vendors {
		vendor := inv[v]
		policy := "vendor-" + v
		rules := fmt.Sprintf("path \"secret/data/vendors/%s/*\" {\n  capabilities = [\"read\"]\n}\n", v)
		if err := root.Sys().PutPolicyWithContext(ctx, policy, rules); err != nil {
			return nil, fmt.Errorf("policy %s: %w", policy, err)
		}
		if _, err := root.KVv2("secret").Put(ctx, "vendors/"+v+"/customers", map[string]any{
			"rows": "42,000 customer records (demo data)",
		}); err != nil {
			return nil, fmt.Errorf("secret for %s: %w", v, err)
		}
		nv := vendor
		nv.Credentials = map[string]killswitch.Credential{}
		names := slices.Sorted(maps.Keys(vendor.Credentials))
		for _, name := range names {
			c := vendor.Credentials[name]
			if c.Kind == killswitch.CredTokenAccessor {
				sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{
					Policies: []string{policy}, TTL: "24h", DisplayName: name, Renewable: ptr(true),
				})
				if err != nil {
					return nil, fmt.Errorf("token for %s/%s: %w", v, name, err)
				}
				c.Accessor = sec.Auth.Accessor
				if v == "mailer" && out.victim == nil && !c.Protected && strings.Contains(name, "key") {
					out.victim = &credential{vendor: v, cred: name, token: sec.Auth.ClientToken}
				}
			}
			nv.Credentials[name] = c
		}
		out.inventory[v] = nv
	}
	if out.victim == nil {
		return nil, fmt.Errorf("no mailer key to steal in the inventory")
	}
	return out, nil
}

// serviceToken creates the "killswitch" policy and a token holding only it.
func serviceToken(ctx context.Context, root *api.Client, policy string) (string, error) {
	if err := root.Sys().PutPolicyWithContext(ctx, "killswitch", policy); err != nil {
		return "", err
	}
	sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{
		Policies: []string{"killswitch"}, TTL: "2h", DisplayName: "killswitch", Renewable: ptr(true),
	})
	if err != nil {
		return "", err
	}
	return sec.Auth.ClientToken, nil
}

func ptr[T any](v T) *T { return &v }
