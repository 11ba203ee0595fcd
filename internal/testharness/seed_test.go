package testharness

import (
	"context"
	"testing"
)

// TestSeedVendor seeds two vendors in one dev Vault (one with PostgreSQL leases) and
// checks that every token of a vendor is of its entity: disabling the entity denies
// them all, and the other vendor is untouched.
func TestSeedVendor(t *testing.T) {
	pg := Postgres(t)
	v := DevVault(t)
	c := v.Client(t)
	a := SeedVendor(t, c, pg, "alpha")
	b := SeedVendor(t, c, nil, "beta")
	if len(a.Tokens) != 3 || len(a.SecretIDs) != 2 || len(a.Leases) != 5 || len(a.KV) != 2 || len(b.Leases) != 0 {
		t.Fatalf("seeded %d tokens, %d secret-ids, %d leases, %d KV; beta %d leases", len(a.Tokens), len(a.SecretIDs), len(a.Leases), len(a.KV), len(b.Leases))
	}
	if a.Vendor.Vault.Entity != "alpha" || len(a.Vendor.Vault.LeasePrefixes) != 1 || len(b.Vendor.Vault.LeasePrefixes) != 0 {
		t.Fatalf("holdings %+v / %+v", a.Vendor.Vault, b.Vendor.Vault)
	}
	for _, s := range []*SeededVendor{a, b} {
		if err := s.Untouched(s.State(t)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Logical().WriteWithContext(context.Background(), "identity/entity/name/alpha", map[string]any{"disabled": true}); err != nil {
		t.Fatal(err)
	}
	st := a.State(t)
	for i, err := range st.Tokens {
		if err == nil {
			t.Errorf("token %d (%s) works with its entity disabled", i, a.Tokens[i].Via)
		}
	}
	for i, err := range st.SecretIDs {
		if err == nil {
			t.Errorf("secret-id %d logs in with the entity disabled", i)
		}
	}
	if !st.EntityDisabled || a.Untouched(st) == nil {
		t.Fatal("the state does not show the disabled entity")
	}
	if err := b.Untouched(b.State(t)); err != nil {
		t.Fatal(err)
	}
}
