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
	"github.com/killswitch-dev/killswitch/internal/devvault"
)

// SeededVendor is a vendor seeded in a dev Vault by devvault.SeedVendor (see
// devvault.Seeded for what it holds: an entity with three tokens, two secret-ids, five
// database leases with PostgreSQL, two KV secrets, a policy), with what is needed to
// check each of its credentials from the outside. Secrets are kept in clear here, for
// checks: never put them in a ledger or a log.
type SeededVendor struct {
	*devvault.Seeded

	client *api.Client
	pg     *PG
}

// SeedVendor seeds a vendor named name in the dev Vault that client (a root token) is
// connected to (devvault.SeedVendor); pg may be nil (no database leases). The test
// fails on any error.
func SeedVendor(tb testing.TB, client *api.Client, pg *PG, name string) *SeededVendor {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var db *devvault.Database
	if pg != nil {
		db = &devvault.Database{ConnectionURL: pg.VaultConnectionURL(), Username: pg.SuperUser, Password: pg.Password}
	}
	v, err := devvault.SeedVendor(ctx, client, db, name)
	if err != nil {
		tb.Fatal(err)
	}
	return &SeededVendor{Seeded: v, client: client, pg: pg}
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
