package testharness

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/killswitch-dev/killswitch"
)

// SeededVendor is a vendor that SeedVendor set up in a dev Vault, holding credentials
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
//   - Leases: with a PostgreSQL cluster, five database logins issued by
//     database/creds/N (connection "pg-N", role "N"), none listed;
//   - KV: two KV v2 secrets, secret/vendors/N/api and secret/vendors/N/db, two versions each.
//
// Vendor is the inventory entry: Credentials {"N-api" (token), "N-policy" (policy)} and
// Vault holdings {Entity N, AppRoles [approle/N], LeasePrefixes [database/creds/N] (only
// with PostgreSQL), KV [both paths]}.
type SeededVendor struct {
	// Name is the vendor's name, N.
	Name string
	// Vendor is the inventory entry (credentials and Vault holdings).
	Vendor killswitch.Vendor
	// Policy is the vendor's policy name ("vendor-N") and PolicyText its rules as seeded.
	Policy, PolicyText string
	// Entity is the entity's name (N) and EntityID its ID.
	Entity, EntityID string
	// Tokens are the entity's tokens, in clear. Tokens[0] is the inventory's "N-api".
	Tokens []SeededToken
	// Role is the AppRole role (mount "approle") and RoleID its role-id.
	Role, RoleID string
	// SecretIDs are the role's secret-ids, in clear.
	SecretIDs []SeededSecretID
	// Leases are the database logins and their leases (empty without PostgreSQL).
	Leases []SeededLease
	// KV are the vendor's KV v2 secrets as seeded.
	KV []SeededKV

	client *api.Client
	pg     *PG
}

// SeededToken is one token of the entity.
type SeededToken struct {
	// Token and Accessor are in clear.
	Token, Accessor string
	// Listed reports the token is in the inventory (credential "N-api").
	Listed bool
	// Via says how it was made: "token-role" or "approle".
	Via string
}

// SeededSecretID is one AppRole secret-id.
type SeededSecretID struct {
	SecretID, Accessor string
}

// SeededLease is one database login issued by Vault.
type SeededLease struct {
	LeaseID, User, Password string
}

// SeededKV is one KV v2 secret: its mount, path and the data of each seeded version
// (Versions[0] is version 1).
type SeededKV struct {
	Mount, Path string
	Versions    []map[string]any
}

// SeedVendor seeds a vendor named name in the dev Vault that client (a root token) is
// connected to, as SeededVendor describes. pg may be nil: the vendor then has no
// database leases and no lease prefix. Names derive from name, so several vendors can
// be seeded in one Vault (seed a second one to check that a kill leaves it untouched).
// The AppRole mount "approle", the database mount "database" and the KV v2 mount
// "secret" of the dev Vault are used; the test fails on any error.
func SeedVendor(tb testing.TB, client *api.Client, pg *PG, name string) *SeededVendor {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := client.Logical()
	// must("what")(call) fails the test when the call fails.
	must := func(what string) func(*api.Secret, error) *api.Secret {
		return func(s *api.Secret, err error) *api.Secret {
			tb.Helper()
			if err != nil {
				tb.Fatalf("seed %s: %s: %v", name, what, err)
			}
			return s
		}
	}
	s := &SeededVendor{Name: name, Policy: "vendor-" + name, Entity: name, Role: name, client: client, pg: pg}
	s.PolicyText = fmt.Sprintf("# vendor %s\npath \"secret/data/vendors/%s/*\" {\n  capabilities = [\"read\"]\n}\n", name, name)
	if err := client.Sys().PutPolicyWithContext(ctx, s.Policy, s.PolicyText); err != nil {
		tb.Fatalf("seed %s: policy: %v", name, err)
	}
	auths, err := client.Sys().ListAuthWithContext(ctx)
	if err != nil {
		tb.Fatalf("seed %s: list auth mounts: %v", name, err)
	}
	tokenMount, approleMount := auths["token/"], auths["approle/"]
	if tokenMount == nil || approleMount == nil {
		tb.Fatalf("seed %s: the dev Vault lacks the token or approle auth mount", name)
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
		s.Tokens = append(s.Tokens, SeededToken{Token: tok.Auth.ClientToken, Accessor: tok.Auth.Accessor, Via: "token-role"})
	}

	// The AppRole role, its alias on the entity, two secret-ids and a login.
	must("approle role")(l.WriteWithContext(ctx, "auth/approle/role/"+name, map[string]any{"token_policies": s.Policy, "token_ttl": "1h"}))
	rid := must("role-id")(l.ReadWithContext(ctx, "auth/approle/role/"+name+"/role-id"))
	s.RoleID, _ = rid.Data["role_id"].(string)
	must("approle entity alias")(l.WriteWithContext(ctx, "identity/entity-alias", map[string]any{
		"name": s.RoleID, "mount_accessor": approleMount.Accessor, "canonical_id": s.EntityID}))
	for range 2 {
		sid := must("secret-id")(l.WriteWithContext(ctx, "auth/approle/role/"+name+"/secret-id", nil))
		s.SecretIDs = append(s.SecretIDs, SeededSecretID{SecretID: sid.Data["secret_id"].(string), Accessor: sid.Data["secret_id_accessor"].(string)})
	}
	login := must("approle login")(l.WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": s.RoleID, "secret_id": s.SecretIDs[0].SecretID}))
	s.Tokens = append(s.Tokens, SeededToken{Token: login.Auth.ClientToken, Accessor: login.Auth.Accessor, Via: "approle"})
	for i, tok := range s.Tokens {
		if got := lookupEntity(ctx, client, tok.Accessor); got != s.EntityID {
			tb.Fatalf("seed %s: token %d (%s) is of entity %q, want %q", name, i, tok.Via, got, s.EntityID)
		}
	}
	s.Tokens[0].Listed = true

	// Database leases.
	if pg != nil {
		conn := "pg-" + name
		must("database connection")(l.WriteWithContext(ctx, "database/config/"+conn, map[string]any{
			"plugin_name": "postgresql-database-plugin", "connection_url": pg.VaultConnectionURL(),
			"username": pg.SuperUser, "password": pg.Password, "allowed_roles": name,
		}))
		must("database role")(l.WriteWithContext(ctx, "database/roles/"+name, map[string]any{
			"db_name": conn, "default_ttl": "1h",
			"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		}))
		for range 5 {
			c := must("database creds")(l.ReadWithContext(ctx, "database/creds/"+name))
			s.Leases = append(s.Leases, SeededLease{LeaseID: c.LeaseID, User: c.Data["username"].(string), Password: c.Data["password"].(string)})
		}
	}

	// KV secrets, two versions each.
	kv := client.KVv2("secret")
	for _, leaf := range []string{"api", "db"} {
		sk := SeededKV{Mount: "secret", Path: "vendors/" + name + "/" + leaf}
		for v := 1; v <= 2; v++ {
			data := map[string]any{"user": name + "-" + leaf, "key": fmt.Sprintf("%s-%s-secret-v%d", name, leaf, v)}
			if _, err := kv.Put(ctx, sk.Path, data); err != nil {
				tb.Fatalf("seed %s: kv %s: %v", name, sk.Path, err)
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
	if pg != nil {
		s.Vendor.Vault.LeasePrefixes = []string{"database/creds/" + name}
	}
	for _, k := range s.KV {
		s.Vendor.Vault.KV = append(s.Vendor.Vault.KV, killswitch.KVRef{Mount: k.Mount, Path: k.Path})
	}
	return s
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

// VendorState is what works of a seeded vendor, seen from the outside (State).
type VendorState struct {
	// Tokens: per token, nil when it works (auth/token/lookup-self with it), else why not.
	Tokens []error
	// SecretIDs: per secret-id, nil when an AppRole login with it works.
	SecretIDs []error
	// Leases: per lease, nil when sys/leases/lookup still finds it.
	Leases []error
	// DBLogins: per lease, nil when its PostgreSQL login still works.
	DBLogins []error
	// KVLive: per KV secret, the seeded versions (1-based) not destroyed.
	KVLive [][]int
	// EntityDisabled is the entity's disabled flag.
	EntityDisabled bool
	// PolicyText is the policy as it reads now.
	PolicyText string
}

// State checks, with the root client it was seeded with, what of the vendor works now.
// Each token and secret-id is really used (a lookup-self, a login; a login creates a
// token, left to expire), each lease looked up and its database login tried.
func (s *SeededVendor) State(tb testing.TB) VendorState {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var st VendorState
	for _, tok := range s.Tokens {
		c, err := s.client.Clone()
		if err != nil {
			tb.Fatal(err)
		}
		c.SetToken(tok.Token)
		_, err = c.Auth().Token().LookupSelfWithContext(ctx)
		st.Tokens = append(st.Tokens, err)
	}
	for _, sid := range s.SecretIDs {
		st.SecretIDs = append(st.SecretIDs, s.Login(tb, sid.SecretID))
	}
	for _, le := range s.Leases {
		_, err := s.client.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": le.LeaseID})
		st.Leases = append(st.Leases, err)
		st.DBLogins = append(st.DBLogins, s.pg.CanLogin(ctx, le.User, le.Password))
	}
	for _, k := range s.KV {
		meta, err := s.client.KVv2(k.Mount).GetMetadata(ctx, k.Path)
		if err != nil {
			tb.Fatalf("kv metadata %s: %v", k.Path, err)
		}
		var live []int
		for v := range k.Versions {
			if m, ok := meta.Versions[strconv.Itoa(v+1)]; ok && !m.Destroyed {
				live = append(live, v+1)
			}
		}
		st.KVLive = append(st.KVLive, live)
	}
	ent, err := s.client.Logical().ReadWithContext(ctx, "identity/entity/name/"+s.Entity)
	if err != nil || ent == nil {
		tb.Fatalf("read entity %s: %v", s.Entity, err)
	}
	st.EntityDisabled, _ = ent.Data["disabled"].(bool)
	st.PolicyText, err = s.client.Sys().GetPolicyWithContext(ctx, s.Policy)
	if err != nil {
		tb.Fatalf("read policy %s: %v", s.Policy, err)
	}
	return st
}

// Login logs in with the vendor's role-id and secretID; nil when it works.
func (s *SeededVendor) Login(tb testing.TB, secretID string) error {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s.client.Clone()
	if err != nil {
		tb.Fatal(err)
	}
	c.SetToken("")
	sec, err := c.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": s.RoleID, "secret_id": secretID})
	if err == nil && (sec == nil || sec.Auth == nil) {
		err = errors.New("login returned no token")
	}
	return err
}

// Untouched returns an error naming everything of st that is not as seeded: a token,
// secret-id, lease or database login that no longer works, a KV version destroyed, the
// entity disabled, the policy changed. Use it on a vendor that must be left alone.
func (s *SeededVendor) Untouched(st VendorState) error {
	var bad []string
	for i, err := range st.Tokens {
		if err != nil {
			bad = append(bad, fmt.Sprintf("token %d (%s) fails: %v", i, s.Tokens[i].Via, oneLine(err)))
		}
	}
	for i, err := range st.SecretIDs {
		if err != nil {
			bad = append(bad, fmt.Sprintf("secret-id %d does not log in: %v", i, oneLine(err)))
		}
	}
	for i := range st.Leases {
		if st.Leases[i] != nil || st.DBLogins[i] != nil {
			bad = append(bad, fmt.Sprintf("lease %d: lookup %v, database login %v", i, oneLine(st.Leases[i]), oneLine(st.DBLogins[i])))
		}
	}
	for i, live := range st.KVLive {
		if len(live) != len(s.KV[i].Versions) {
			bad = append(bad, fmt.Sprintf("%s: only versions %v of %d are live", s.KV[i].Path, live, len(s.KV[i].Versions)))
		}
	}
	if st.EntityDisabled {
		bad = append(bad, "entity "+s.Entity+" is disabled")
	}
	if st.PolicyText != s.PolicyText {
		bad = append(bad, "policy "+s.Policy+" changed")
	}
	if len(bad) > 0 {
		return fmt.Errorf("vendor %s is not as seeded: %s", s.Name, strings.Join(bad, "; "))
	}
	return nil
}

// Killed returns an error naming everything of st that still works after a kill of the
// whole vendor: every token must be denied, every seeded secret-id must fail to log
// in, every lease must be gone and its database login refused, every seeded KV version
// destroyed, the entity disabled. (The policy's state is left to the caller: a kill may
// quarantine it or not.)
func (s *SeededVendor) Killed(st VendorState) error {
	var bad []string
	for i, err := range st.Tokens {
		if err == nil {
			bad = append(bad, fmt.Sprintf("token %d (%s) still works", i, s.Tokens[i].Via))
		}
	}
	for i, err := range st.SecretIDs {
		if err == nil {
			bad = append(bad, fmt.Sprintf("secret-id %d still logs in", i))
		}
	}
	for i := range st.Leases {
		if st.Leases[i] == nil {
			bad = append(bad, fmt.Sprintf("lease %d is still found", i))
		}
		if st.DBLogins[i] == nil {
			bad = append(bad, fmt.Sprintf("the database login of lease %d still works", i))
		}
	}
	for i, live := range st.KVLive {
		if len(live) > 0 {
			bad = append(bad, fmt.Sprintf("%s: seeded versions %v are not destroyed", s.KV[i].Path, live))
		}
	}
	if !st.EntityDisabled {
		bad = append(bad, "entity "+s.Entity+" is enabled")
	}
	if len(bad) > 0 {
		return fmt.Errorf("vendor %s is not killed: %s", s.Name, strings.Join(bad, "; "))
	}
	return nil
}

func oneLine(err error) string {
	if err == nil {
		return "ok"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}
