package vault_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/config"
)

var update = flag.Bool("update", false, "rewrite the golden policies in testdata/ and killswitch-policy.hcl")

// exampleHeader heads killswitch-policy.hcl, the example generated for the example
// inventory.
const exampleHeader = `# EXAMPLE ONLY: the policy that
#   killswitch vault policy --config actions/vault/testdata/example-inventory.yaml
# generates for the example inventory (made-up accessors and lease IDs). Do not grant it:
# generate the policy for your own inventory and write it with
#   killswitch vault policy --config killswitch.yaml | vault policy write killswitch -
# Kept in sync by TestPolicyForGolden (go test ./actions/vault -run Golden -update).

`

func loadInventory(t *testing.T, path string) killswitch.Inventory {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := config.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Vendors
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the generated policy (run with -update to accept):\n%s", path, got)
	}
}

func TestPolicyForGolden(t *testing.T) {
	tok := func(acc string) killswitch.Credential {
		return killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc}
	}
	tests := []struct {
		name string
		inv  killswitch.Inventory
	}{
		{"empty", killswitch.Inventory{}},
		{"tokens", killswitch.Inventory{
			"a": {Credentials: map[string]killswitch.Credential{"k1": tok("accB"), "k2": tok("accA")}},
			"b": {Credentials: map[string]killswitch.Credential{"k": tok("accA"), "glass": {Kind: killswitch.CredTokenAccessor, Accessor: "accP", Protected: true}}},
		}},
		{"approle-two-roles", killswitch.Inventory{"a": {Credentials: map[string]killswitch.Credential{
			"w1": {Kind: killswitch.CredAppRoleSecretID, Role: "r1", SecretIDAccessor: "s1"},
			"w2": {Kind: killswitch.CredAppRoleSecretID, Role: "r1", SecretIDAccessor: "s2"},
			"w3": {Kind: killswitch.CredAppRoleSecretID, Role: "r2", Mount: "approle-eu", SecretIDAccessor: "s3"},
		}}}},
		{"leases", killswitch.Inventory{"a": {Credentials: map[string]killswitch.Credential{
			"one":    {Kind: killswitch.CredLease, LeaseID: "database/creds/a/L1"},
			"two":    {Kind: killswitch.CredLease, LeaseID: "aws/creds/a/L2"},
			"prefix": {Kind: killswitch.CredLeasePrefix, LeasePrefix: "/database/creds/a/"},
		}}}},
		{"kv-and-policy", killswitch.Inventory{"a": {Credentials: map[string]killswitch.Credential{
			"kv":     {Kind: killswitch.CredKV, Path: "vendors/a/api"},
			"kv2":    {Kind: killswitch.CredKV, Mount: "team-kv", Path: "/a/key/"},
			"policy": {Kind: killswitch.CredPolicy, Policy: "vendor-a"},
		}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := vault.PolicyFor(tt.inv)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", tt.name+".hcl"), got)
			if strings.Contains(got, `"*"`) || strings.Contains(got, "/+/") || strings.Contains(got, "accP") {
				t.Errorf("the policy holds a glob or a protected credential:\n%s", got)
			}
		})
	}
	t.Run("example", func(t *testing.T) {
		got, err := vault.PolicyFor(loadInventory(t, filepath.Join("testdata", "example-inventory.yaml")))
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "killswitch-policy.hcl", exampleHeader+got)
	})
}

// Every inventory value a policy could not hold exactly is refused, never written.
func TestPolicyForRefusesUnsafeValues(t *testing.T) {
	tests := []struct {
		name string
		c    killswitch.Credential
	}{
		{"glob accessor", killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: "abc*"}},
		{"quote in accessor", killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: `a"]}path "*" {`}},
		{"newline in secret-id accessor", killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "r", SecretIDAccessor: "a\nb"}},
		{"glob role", killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "+", SecretIDAccessor: "a"}},
		{"glob lease", killswitch.Credential{Kind: killswitch.CredLease, LeaseID: "database/creds/*"}},
		{"dotdot prefix", killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/../sys"}},
		{"space in kv path", killswitch.Credential{Kind: killswitch.CredKV, Path: "vendors/a b"}},
		{"glob policy", killswitch.Credential{Kind: killswitch.CredPolicy, Policy: "vendor-*"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := vault.PolicyFor(killswitch.Inventory{"v": {Credentials: map[string]killswitch.Credential{"c": tt.c}}})
			if !errors.Is(err, vault.ErrUnsafePolicyValue) || !errors.Is(err, killswitch.ErrPermanent) || p != "" {
				t.Fatalf("PolicyFor = %q, %v; want a permanent ErrUnsafePolicyValue", p, err)
			}
			if !strings.Contains(err.Error(), "v/c") {
				t.Errorf("the error does not name the credential: %v", err)
			}
		})
	}
}
