package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch/internal/testharness"
)

func TestVaultCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := writeE2EConfig(t, dir, "some-accessor", 4222)
	code, shipped, _ := run(t, "vault", "policy")
	if code != 0 || !strings.Contains(shipped, `path "auth/token/revoke-accessor"`) {
		t.Fatalf("vault policy: %d\n%s", code, shipped)
	}
	code, tight, _ := run(t, "vault", "policy", "--config", cfg)
	if code != 0 || !strings.Contains(tight, "# mailer/mailer-api\npath \"auth/token/revoke-accessor\"") || strings.Contains(tight, "sys/policies") {
		t.Fatalf("vault policy --config: %d\n%s", code, tight)
	}

	v := testharness.DevVault(t)
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", policyToken(t, v.Client(t), "killswitch", tight))
	if code, out, stderr := run(t, "vault", "check", "--config", cfg); code != 0 || !strings.Contains(out, "holds every capability") {
		t.Fatalf("vault check with the generated policy: %d %s %s", code, out, stderr)
	}
	// The generated policy holds nothing on policies: the inventory quarantines none.
	if code, _, stderr := run(t, "vault", "restore-policy", "--config", cfg, "vendor-mailer"); code != 1 || !strings.Contains(stderr, "answered 403") {
		t.Fatalf("restore-policy without the capability: %d %s", code, stderr)
	}
	if code, _, stderr := run(t, "vault", "check", "--config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(stderr, "missing.yaml") {
		t.Fatalf("vault check with a missing config: %d %s", code, stderr)
	}
}
