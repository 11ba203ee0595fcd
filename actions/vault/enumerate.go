package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// ErrProtectedHolding is wrapped (permanent) by Enumerate when cutting one of the
// vendor's holdings would also cut a protected credential: a protected token of the
// vendor's entity (disabling the entity denies it), or a protected lease under one of
// its lease prefixes (revoke-prefix revokes it). Fix the inventory: drop the holding,
// or the protection.
var ErrProtectedHolding = errors.New("a Vault holding of the vendor covers a protected credential")

// Enumerate returns the credentials kill-vendor cuts beyond v.Credentials, resolved
// from the vendor's Vault holdings (v.Vault), keyed by a deterministic name:
//
//   - "approle:<role>:<fp>" (kind approle_secret_id) for every secret-id accessor listed
//     under each role of v.Vault.AppRoles (LIST auth/<mount>/role/<role>/secret-id),
//     named by the accessor's fingerprint, never the accessor ("approle:<mount>/<role>:<fp>"
//     for a mount other than approle);
//   - "leases:<prefix>" (kind lease_prefix) for every v.Vault.LeasePrefixes;
//   - "kv:<mount>/<path>" (kind kv) for every v.Vault.KV;
//   - "entity:<name>" (kind entity) for v.Vault.Entity, with Accessor set to the first
//     (by credential name) non-protected token accessor of the vendor's inventory whose
//     auth/token/lookup-accessor entity_id is the entity's: the token Entity.Verify uses
//     as proof. No such token: Accessor is empty and the proof rests on the read-back.
//
// What v.Credentials already lists (the same identity, protected or not) is left out:
// a protected credential is never added back, and a listed one keeps its own name.
// A role that does not exist or has no secret-id adds nothing; so does an entity that
// does not exist (its entity credential is still added: its Plan then fails loudly).
// Enumerate returns ErrProtectedHolding when a holding covers a protected token or
// lease, and a permanent error naming the path when Vault answers 403 (the token lacks
// the policy of PolicyFor). Only reads are made; the accessors are returned in the
// credentials (the inventory's own form), fingerprinted in names, and never in errors.
func Enumerate(ctx context.Context, client *api.Client, vendor string, v killswitch.Vendor, fp actions.Fingerprinter) (map[string]killswitch.Credential, error) {
	c := &caller{c: client}
	out := map[string]killswitch.Credential{}
	listed := func(want killswitch.Credential) bool {
		for _, have := range v.Credentials {
			if sameIdentity(have, want) {
				return true
			}
		}
		return false
	}
	add := func(name string, cred killswitch.Credential) {
		if !listed(cred) {
			out[name] = cred
		}
	}
	for _, ref := range v.Vault.AppRoles {
		base, err := approleRoleBase(ref)
		if err != nil {
			return nil, fmt.Errorf("enumerate %s: %w", vendor, err)
		}
		accs, _, err := c.listSecretIDs(ctx, base)
		if err != nil {
			return nil, fmt.Errorf("enumerate %s: %w", vendor, err)
		}
		prefix := "approle:" + ref.Role + ":"
		if m := strings.Trim(ref.Mount, "/"); m != "" && m != "approle" {
			prefix = "approle:" + m + "/" + ref.Role + ":"
		}
		for _, acc := range accs {
			add(prefix+fp.Of(acc), killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Mount: ref.Mount, Role: ref.Role, SecretIDAccessor: acc})
		}
	}
	for _, p := range v.Vault.LeasePrefixes {
		p = strings.Trim(p, "/")
		if p == "" {
			continue
		}
		for name, cred := range v.Credentials {
			if cred.Protected && cred.Kind == killswitch.CredLease && strings.HasPrefix(cred.LeaseID, p+"/") {
				return nil, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("enumerate %s: %w: revoking every lease under %s would revoke the protected lease %s", vendor, ErrProtectedHolding, p, name))
			}
		}
		add("leases:"+p, killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: p})
	}
	for _, ref := range v.Vault.KV {
		mount, path := strings.Trim(ref.Mount, "/"), strings.Trim(ref.Path, "/")
		if mount == "" {
			mount = "secret"
		}
		if path == "" {
			continue
		}
		add("kv:"+mount+"/"+path, killswitch.Credential{Kind: killswitch.CredKV, Mount: mount, Path: path})
	}
	if name := v.Vault.Entity; name != "" {
		cred := killswitch.Credential{Kind: killswitch.CredEntity, Entity: name}
		if listed(cred) {
			return out, nil
		}
		if !validName(name) {
			return nil, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("enumerate %s: vault.entity %q is not an entity name", vendor, name))
		}
		st, err := c.readEntity(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("enumerate %s: %w", vendor, err)
		}
		if st.found {
			if cred.Accessor, err = c.entityToken(ctx, vendor, v, st.id, fp); err != nil {
				return nil, err
			}
		}
		out["entity:"+name] = cred
	}
	return out, nil
}

// entityToken returns the accessor of the first non-protected inventory token of the
// vendor that belongs to the entity, and an ErrProtectedHolding error when a protected
// token belongs to it.
func (c *caller) entityToken(ctx context.Context, vendor string, v killswitch.Vendor, entityID string, fp actions.Fingerprinter) (string, error) {
	names := make([]string, 0, len(v.Credentials))
	for name, cred := range v.Credentials {
		if cred.Kind == killswitch.CredTokenAccessor && cred.Accessor != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	proof := ""
	for _, name := range names {
		cred := v.Credentials[name]
		r, err := c.call(ctx, http.MethodPut, "auth/token/lookup-accessor", map[string]any{"accessor": cred.Accessor})
		switch {
		case err != nil:
			return "", fmt.Errorf("enumerate %s: %w", vendor, err)
		case r.status == http.StatusBadRequest && (r.has("invalid accessor") || r.has("token not found")):
			continue
		case !r.ok():
			return "", fmt.Errorf("enumerate %s: %w", vendor, fail("lookup-accessor", r, func(s string) string { return strings.ReplaceAll(s, cred.Accessor, fp.Of(cred.Accessor)) }))
		}
		if str(r.data, "entity_id") != entityID {
			continue
		}
		if cred.Protected {
			return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("enumerate %s: %w: disabling entity %s would deny the protected token %s", vendor, ErrProtectedHolding, v.Vault.Entity, name))
		}
		if proof == "" {
			proof = cred.Accessor
		}
	}
	return proof, nil
}

// sameIdentity reports whether two credentials name the same thing in Vault.
func sameIdentity(a, b killswitch.Credential) bool {
	if a.Kind != b.Kind {
		return false
	}
	def := func(s, d string) string {
		if s = strings.Trim(s, "/"); s == "" {
			return d
		}
		return s
	}
	switch a.Kind {
	case killswitch.CredTokenAccessor:
		return a.Accessor == b.Accessor
	case killswitch.CredAppRoleSecretID:
		return def(a.Mount, "approle") == def(b.Mount, "approle") && a.Role == b.Role && a.SecretIDAccessor == b.SecretIDAccessor
	case killswitch.CredLease:
		return a.LeaseID == b.LeaseID
	case killswitch.CredLeasePrefix:
		return strings.Trim(a.LeasePrefix, "/") == strings.Trim(b.LeasePrefix, "/")
	case killswitch.CredKV:
		return def(a.Mount, "secret") == def(b.Mount, "secret") && strings.Trim(a.Path, "/") == strings.Trim(b.Path, "/")
	case killswitch.CredPolicy:
		return a.Policy == b.Policy
	case killswitch.CredEntity:
		return a.Entity == b.Entity
	}
	return false
}
