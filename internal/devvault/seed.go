package devvault

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
)

// Seeded is a vendor that SeedVendor set up in a dev Vault, holding credentials
// of every kind kill-vendor cuts, with what is needed to check each of them from the
// outside. Secrets are kept in clear here, for checks: never put them in a ledger or
// a log.
//
// What it holds, for a vendor named N (every Vault name derives from N):
//
//   - an ACL policy "vendor-N" (read on secret/data/vendors/N/*), which every token and
//     database role of N uses: quarantinable;
//   - an identity entity "N", with two aliases: one on the token auth mount (the token
//     role "N", allowed_entity_aliases) and one on the AppRole mount (the role-id of
//     the AppRole role "N"), so that both kinds of login are tokens of the entity;
//   - Tokens: three tokens of the entity — two from auth/token/create/N with the entity
//     alias, one from an AppRole login — of which the first is listed in the inventory
//     (credential "N-api", kind token) and the other two are known only to the vendor;
//   - SecretIDs: two secret-ids of the AppRole role "N", none listed in the inventory;
//   - Leases: with a database (PostgreSQL), five database logins issued by
//     database/creds/N (connection "pg-N", role "N"), none listed;
//   - KV: two KV v2 secrets, secret/vendors/N/api and secret/vendors/N/db, two versions each.
//
// Vendor is the inventory entry: Credentials {"N-api" (token), "N-policy" (policy)} and
// Vault holdings {Entity N, AppRoles [approle/N], LeasePrefixes [database/creds/N] (only
// with PostgreSQL), KV [both paths]}.
type Seeded struct {
	// Name is the vendor's name, N.
	Name string
	// Vendor is the inventory entry (credentials and Vault holdings).
	Vendor killswitch.Vendor
	// Policy is the vendor's policy name ("vendor-N") and PolicyText its rules as seeded.
	Policy, PolicyText string
	// Entity is the entity's name (N) and EntityID its ID.
	Entity, EntityID string
	// Tokens are the entity's tokens, in clear. Tokens[0] is the inventory's "N-api".
	Tokens []Token
	// Role is the AppRole role (mount "approle") and RoleID its role-id.
	Role, RoleID string
	// SecretIDs are the role's secret-ids, in clear.
	SecretIDs []SecretID
	// Leases are the database logins and their leases (empty without PostgreSQL).
	Leases []Lease
	// KV are the vendor's KV v2 secrets as seeded.
	KV []KV
}

// Token is one token of the entity.
type Token struct {
	// Token and Accessor are in clear.
	Token, Accessor string
	// Listed reports the token is in the inventory (credential "N-api").
	Listed bool
	// Via says how it was made: "token-role" or "approle".
	Via string
}

// SecretID is one AppRole secret-id.
type SecretID struct {
	SecretID, Accessor string
}

// Lease is one database login issued by Vault.
type Lease struct {
	LeaseID, User, Password string
}

// KV is one KV v2 secret: its mount, path and the data of each seeded version
// (Versions[0] is version 1).
type KV struct {
	Mount, Path string
	Versions    []map[string]any
}

// Database is a PostgreSQL database Vault's database engine connects to (the
// connection_url template with {{username}} and {{password}}, and that superuser).
type Database struct {
	ConnectionURL, Username, Password string
}

// seedError carries SeedVendor's error out of its steps.
type seedError struct{ err error }

// SeedVendor seeds a vendor named name in the dev Vault that client (a root token) is
// connected to, as Seeded describes. db may be nil: the vendor then has no database
// leases and no lease prefix. Names derive from name, so several vendors can be seeded
// in one Vault. The AppRole mount "approle", the database mount "database" and the KV
// v2 mount "secret" of the dev Vault are used. The demo seeds with it; the tests with
// testharness.SeedVendor, which checks the result from the outside.
func SeedVendor(ctx context.Context, client *api.Client, db *Database, name string) (_ *Seeded, err error) {
	defer func() {
		if r := recover(); r != nil {
			se, ok := r.(seedError)
			if !ok {
				panic(r)
			}
			err = se.err
		}
	}()
	l := client.Logical()
	// fatal ends the seeding with an error (recovered above); must("what")(call) calls
	// it when the call fails.
	fatal := func(format string, args ...any) { panic(seedError{fmt.Errorf("seed "+format, args...)}) }
	must := func(what string) func(*api.Secret, error) *api.Secret {
		return func(s *api.Secret, err error) *api.Secret {
			if err != nil {
				fatal("%s: %s: %w", name, what, err)
			}
			return s
		}
	}
	s := &Seeded{Name: name, Policy: "vendor-" + name, Entity: name, Role: name}
	s.PolicyText = fmt.Sprintf("# vendor %s\npath \"secret/data/vendors/%s/*\" {\n  capabilities = [\"read\"]\n}\n", name, name)
	if err := client.Sys().PutPolicyWithContext(ctx, s.Policy, s.PolicyText); err != nil {
		fatal("seed %s: policy: %w", name, err)
	}
	auths, err := client.Sys().ListAuthWithContext(ctx)
	if err != nil {
		fatal("seed %s: list auth mounts: %w", name, err)
	}
	tokenMount, approleMount := auths["token/"], auths["approle/"]
	if tokenMount == nil || approleMount == nil {
		fatal("seed %s: the dev Vault lacks the token or approle auth mount", name)
	}

	// The entity, and its alias on the token mount.
	must("entity")(l.WriteWithContext(ctx, "identity/entity/name/"+name, map[string]any{"metadata": map[string]any{"vendor": name}}))
	ent := must("read entity")(l.ReadWithContext(ctx, "identity/entity/name/"+name))
	s.EntityID, _ = ent.Data["id"].(string)
	alias := name + "-token"
	must("token role")(l.WriteWithContext(ctx, "auth/token/roles/"+name, map[string]any{
		"allowed_entity_aliases": []string{alias}, "allowed_policies": []string{s.Policy}, "orphan": true, "token_ttl": "1h"}))
	must("token entity alias")(l.WriteWithContext(ctx, "identity/entity-alias", map[string]any{
		"name": alias, "mount_accessor": tokenMount.Accessor, "canonical_id": s.EntityID}))
	for range 2 {
		tok := must("token")(l.WriteWithContext(ctx, "auth/token/create/"+name, map[string]any{"entity_alias": alias, "policies": []string{s.Policy}}))
		s.Tokens = append(s.Tokens, Token{Token: tok.Auth.ClientToken, Accessor: tok.Auth.Accessor, Via: "token-role"})
	}

	// The AppRole role, its alias on the entity, two secret-ids and a login.
	must("approle role")(l.WriteWithContext(ctx, "auth/approle/role/"+name, map[string]any{"token_policies": s.Policy, "token_ttl": "1h"}))
	rid := must("role-id")(l.ReadWithContext(ctx, "auth/approle/role/"+name+"/role-id"))
	s.RoleID, _ = rid.Data["role_id"].(string)
	must("approle entity alias")(l.WriteWithContext(ctx, "identity/entity-alias", map[string]any{
		"name": s.RoleID, "mount_accessor": approleMount.Accessor, "canonical_id": s.EntityID}))
	for range 2 {
		sid := must("secret-id")(l.WriteWithContext(ctx, "auth/approle/role/"+name+"/secret-id", nil))
		s.SecretIDs = append(s.SecretIDs, SecretID{SecretID: sid.Data["secret_id"].(string), Accessor: sid.Data["secret_id_accessor"].(string)})
	}
	login := must("approle login")(l.WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": s.RoleID, "secret_id": s.SecretIDs[0].SecretID}))
	s.Tokens = append(s.Tokens, Token{Token: login.Auth.ClientToken, Accessor: login.Auth.Accessor, Via: "approle"})
	for i, tok := range s.Tokens {
		if got := lookupEntity(ctx, client, tok.Accessor); got != s.EntityID {
			fatal("seed %s: token %d (%s) is of entity %q, want %q", name, i, tok.Via, got, s.EntityID)
		}
	}
	s.Tokens[0].Listed = true

	// Database leases.
	if db != nil {
		conn := "pg-" + name
		must("database connection")(l.WriteWithContext(ctx, "database/config/"+conn, map[string]any{
			"plugin_name": "postgresql-database-plugin", "connection_url": db.ConnectionURL,
			"username": db.Username, "password": db.Password, "allowed_roles": name,
		}))
		must("database role")(l.WriteWithContext(ctx, "database/roles/"+name, map[string]any{
			"db_name": conn, "default_ttl": "1h",
			"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		}))
		for range 5 {
			c := must("database creds")(l.ReadWithContext(ctx, "database/creds/"+name))
			s.Leases = append(s.Leases, Lease{LeaseID: c.LeaseID, User: c.Data["username"].(string), Password: c.Data["password"].(string)})
		}
	}

	// KV secrets, two versions each.
	kv := client.KVv2("secret")
	for _, leaf := range []string{"api", "db"} {
		sk := KV{Mount: "secret", Path: "vendors/" + name + "/" + leaf}
		for v := 1; v <= 2; v++ {
			data := map[string]any{"user": name + "-" + leaf, "key": fmt.Sprintf("%s-%s-secret-v%d", name, leaf, v)}
			if _, err := kv.Put(ctx, sk.Path, data); err != nil {
				fatal("seed %s: kv %s: %w", name, sk.Path, err)
			}
			sk.Versions = append(sk.Versions, data)
		}
		s.KV = append(s.KV, sk)
	}

	s.Vendor = killswitch.Vendor{
		Description: "seeded vendor " + name,
		Credentials: map[string]killswitch.Credential{
			name + "-api":    {Kind: killswitch.CredTokenAccessor, Accessor: s.Tokens[0].Accessor},
			name + "-policy": {Kind: killswitch.CredPolicy, Policy: s.Policy},
		},
		Vault: killswitch.Holdings{
			Entity:   name,
			AppRoles: []killswitch.AppRoleRef{{Mount: "approle", Role: name}},
		},
	}
	if db != nil {
		s.Vendor.Vault.LeasePrefixes = []string{"database/creds/" + name}
	}
	for _, k := range s.KV {
		s.Vendor.Vault.KV = append(s.Vendor.Vault.KV, killswitch.KVRef{Mount: k.Mount, Path: k.Path})
	}
	return s, nil
}

// lookupEntity returns the entity ID of the token with accessor acc ("" on error).
func lookupEntity(ctx context.Context, c *api.Client, acc string) string {
	s, err := c.Auth().Token().LookupAccessorWithContext(ctx, acc)
	if err != nil || s == nil {
		return ""
	}
	id, _ := s.Data["entity_id"].(string)
	return id
}
