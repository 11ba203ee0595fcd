package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/internal/testharness"
)

func TestVaultCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := writeE2EConfig(t, dir, "some-accessor", 4222)
	if code, _, stderr := run(t, "vault", "policy"); code != 2 || !strings.Contains(stderr, "--config is required") {
		t.Fatalf("vault policy without --config: %d %s", code, stderr)
	}
	code, tight, _ := run(t, "vault", "policy", "--config", cfg)
	if code != 0 || !strings.Contains(tight, "# mailer/mailer-api\npath \"auth/token/revoke-accessor\"") || strings.Contains(tight, "sys/policies") ||
		!strings.Contains(tight, `"accessor" = ["some-accessor"]`) {
		t.Fatalf("vault policy --config: %d\n%s", code, tight)
	}

	v := testharness.DevVault(t)
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", policyToken(t, v.Client(t), "killswitch", tight))
	if code, out, stderr := run(t, "vault", "check", "--config", cfg); code != 0 || !strings.Contains(out, "and nothing more") {
		t.Fatalf("vault check with the generated policy: %d %s %s", code, out, stderr)
	}
	// The generated policy holds nothing on policies: the inventory quarantines none.
	if code, _, stderr := run(t, "vault", "restore-policy", "--config", cfg, "vendor-mailer"); code != 1 || !strings.Contains(stderr, "answered 403") {
		t.Fatalf("restore-policy without the capability: %d %s", code, stderr)
	}
	if code, _, stderr := run(t, "vault", "check", "--config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(stderr, "missing.yaml") {
		t.Fatalf("vault check with a missing config: %d %s", code, stderr)
	}
	// vault check refuses a broad token too.
	t.Setenv("VAULT_TOKEN", v.RootToken)
	if code, _, stderr := run(t, "vault", "check", "--config", cfg); code != 1 || !strings.Contains(stderr, "root token") {
		t.Fatalf("vault check with the root token: %d %s", code, stderr)
	}
}

// runBinary runs the built killswitch binary with env added and returns its exit code
// and stderr; it fails the test if the process does not exit within 30 s.
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, killswitchBinary(t), args...)
	cmd.Env = append(cmd.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("killswitch %v did not exit in 30s:\n%s", args, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

// `run` refuses a root token and a token that can do more than the inventory's policy,
// before it starts anything, and says how to fix it.
func TestRunRefusesABroadVaultToken(t *testing.T) {
	v := testharness.DevVault(t)
	root := v.Client(t)
	sec, err := root.Auth().Token().CreateOrphanWithContext(context.Background(), &api.TokenCreateRequest{TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	star := policyToken(t, root, "everything", `path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }`)
	tests := []struct {
		name, token, want string
	}{
		{"root", v.RootToken, "the Vault token is a root token"},
		{"star", star, "can do more than the inventory's policy grants"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writeE2EConfig(t, dir, sec.Auth.Accessor, freePort(t))
			code, stderr := runBinary(t, []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + tt.token},
				"run", "--config", cfg, "--data-dir", filepath.Join(dir, "data"), "--http", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
			for _, want := range []string{tt.want, "killswitch vault policy --config " + cfg + " | vault policy write killswitch -",
				"--allow-broad-vault-token"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q", want)
				}
			}
			if code != 1 || t.Failed() {
				t.Fatalf("run with a %s token: exit %d\n%s", tt.name, code, stderr)
			}
			// (The dev root token is the word "root": only the other token is looked for.)
			if (tt.token != v.RootToken && strings.Contains(stderr, tt.token)) || strings.Contains(stderr, sec.Auth.Accessor) {
				t.Fatal("the refusal shows the token or an accessor")
			}
			if strings.Contains(stderr, "killswitch starting") {
				t.Fatal("the service started before refusing the token")
			}
		})
	}
}

// With --allow-broad-vault-token a broad token is accepted, loudly: an error in the
// log, /api/status and a metric.
func TestRunAllowsABroadVaultTokenLoudly(t *testing.T) {
	v := testharness.DevVault(t)
	vendor, _ := seedE2E(t, v)
	dir := t.TempDir()
	s := &svc{dataDir: filepath.Join(dir, "data"), natsPort: freePort(t), httpPort: freePort(t), args: []string{"--allow-broad-vault-token"}}
	s.cfgPath = writeE2EConfig(t, dir, vendor.accessor, s.natsPort)
	s.env = []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.RootToken, "KILLSWITCH_API_TOKEN=" + e2eToken}
	startService(t, s)
	defer func() { _ = s.cmd.Process.Signal(syscall.SIGTERM); <-s.exited }()

	code, b := s.api(t, "GET", "/api/status", e2eToken, "")
	var st struct {
		VaultTokenScope string `json:"vault_token_scope"`
	}
	if err := json.Unmarshal(b, &st); code != 200 || err != nil || st.VaultTokenScope != "broad (allowed by --allow-broad-vault-token)" {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	_, m := s.api(t, "GET", "/metrics", e2eToken, "")
	if !strings.Contains(string(m), "killswitch_vault_token_broad 1") {
		t.Fatalf("metrics:\n%s", grepLines(string(m), "killswitch_vault"))
	}
	line := grepLines(s.log(), "BROAD VAULT TOKEN")
	if !strings.Contains(line, `"level":"error"`) || !strings.Contains(line, `"root":true`) {
		t.Fatalf("no error-level log line about the broad token:\n%s", s.log())
	}
	if strings.Contains(s.log(), vendor.accessor) {
		t.Fatal("the log shows the accessor")
	}
}
