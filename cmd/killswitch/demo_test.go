package main

import (
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch/internal/testharness"
)

// The README's first command, run as a newcomer runs it: it must end with the stolen
// credential verified dead, an exposure window and an intact ledger.
func TestDemoCommand(t *testing.T) {
	testharness.DevVaultBinary(t) // fails under CI=true when the dev Vault cannot be built
	code, out, stderr := run(t, "demo")
	if code != 0 {
		t.Fatalf("demo exited %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"DETECT", "DECIDE", "VERIFIED", "chain intact", "Exposure window:", "verified dead"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
}

// `killswitch demo --cluster`, the real binary: three NATS nodes and three instances;
// the attacked vendor's owner is killed as the attack starts, another instance takes its
// partition over, and the stolen token is verified dead exactly once.
func TestDemoClusterCommand(t *testing.T) {
	testharness.DevVaultBinary(t)
	// The test run loads this machine with other packages: a longer deadline than a
	// newcomer's, and the instances' warnings in the failure if it passes anyway.
	code, out, stderr := testharness.Run(t, nil, "demo", "--cluster", "--timeout", "3m", "--log-level", "error")
	if code != 0 {
		t.Fatalf("demo --cluster exited %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"instances share 8 vendor partitions", "KILL", "MOVE", "took over partition", "VERIFIED",
		"Exactly once: one incident", "chain intact", "Failover:", "exposure window:", "verified dead"} {
		if !strings.Contains(out, want) {
			t.Errorf("the cluster demo's output lacks %q:\n%s", want, out)
		}
	}
	t.Log(out[strings.LastIndex(out, "==> Failover"):])
}

// `killswitch demo --kill-vendor`: the second act cuts a whole vendor off in one plan
// (tokens nobody listed included, through its entity), proves it from the vendor's side
// and restores it, with both times.
func TestDemoKillVendorCommand(t *testing.T) {
	testharness.DevVaultBinary(t)
	code, out, stderr := run(t, "demo", "--kill-vendor")
	if code != 0 {
		t.Fatalf("demo --kill-vendor exited %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"Act 2:", "shown before anything runs", "vault.disable_entity", "KILL ", "all 3 tokens denied",
		"RESTORE ", "stays_dead", "logs in; 2 of its 3 tokens work again", "verified dead"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	t.Log(out[strings.Index(out, "==> Act 2"):])
}
