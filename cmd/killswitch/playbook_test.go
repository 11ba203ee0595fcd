package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/playbooks"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestPlaybookTestShipped: the shipped library passes, with coverage ≥ 90% as printed.
func TestPlaybookTestShipped(t *testing.T) {
	code, out, errs := runCLI(t, "playbook", "test", "--min-coverage", "90")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	m := regexp.MustCompile(`(\d+) passed, 0 failed`).FindStringSubmatch(out)
	c := regexp.MustCompile(`coverage: ([0-9.]+)%`).FindStringSubmatch(out)
	if m == nil || c == nil || strings.Contains(out, "FAIL") {
		t.Fatalf("output:\n%s", out)
	}
	if pct, _ := strconv.ParseFloat(c[1], 64); pct < 90 {
		t.Errorf("coverage %s%%", c[1])
	}
}

func writePlaybookDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const cliPlaybook = `# METADATA
# title: CLI test
# description: A playbook for the CLI tests.
# custom:
#   mode: shadow
package killswitch.playbooks.cli

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {"actions": [{"type": "notify", "message": sprintf("%d", [to_number(input.detection.reason)])}], "reason": "r"} if input.detection.detector == "cap"

decision := {"actions": [{"type": "notify", "message": "spike"}], "reason": "r"} if input.detection.detector == "spike"
`

// TestPlaybookCLIFailures: a failing test, a compile error and an escalation exit 1;
// bad usage exits 2.
func TestPlaybookCLIFailures(t *testing.T) {
	dir := writePlaybookDir(t, map[string]string{
		"cli.rego": cliPlaybook,
		"cli_test.rego": `package killswitch.playbooks.cli_test

import data.killswitch.playbooks.cli

test_fails if {
	cli.decision == {"actions": []} with input as {"detection": {"detector": "spike"}}
}
`,
	})
	if code, out, _ := runCLI(t, "playbook", "test", dir); code != 1 || !strings.Contains(out, "FAIL  killswitch.playbooks.cli_test.test_fails") {
		t.Errorf("failing test: exit %d\n%s", code, out)
	}
	broken := writePlaybookDir(t, map[string]string{"x.rego": "package killswitch.playbooks.x\n\ndecision := {\n"})
	for _, sub := range []string{"test", "check"} {
		if code, _, errs := runCLI(t, "playbook", sub, broken); code != 1 || !strings.Contains(errs, filepath.Join(broken, "x.rego")+":4:") {
			t.Errorf("%s on a broken dir: exit %d\n%s", sub, code, errs)
		}
	}

	in := filepath.Join(t.TempDir(), "in.json")
	b, err := os.ReadFile(filepath.Join("..", "..", "rego", "inputs", "exfil_vendor_wide", "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "playbook", "eval", "--timeout", "10s", "--input", in, dir)
	var res playbooks.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || !res.Escalated || res.Escalation != playbooks.EscalationBuiltinError {
		t.Errorf("escalation: exit %d, %v, %+v\n%s", code, err, res, errs)
	}

	for _, args := range [][]string{{"playbook"}, {"playbook", "nope"}, {"playbook", "eval"}, {"playbook", "test", "/does/not/exist"}} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestPlaybookEvalAndCheck: eval prints the decision (and the trace on request) for a
// full input or a bare detection; check passes on the shipped library.
func TestPlaybookEvalAndCheck(t *testing.T) {
	full := filepath.Join("..", "..", "rego", "inputs", "exfil_critical", "data.json")
	code, out, errs := runCLI(t, "playbook", "eval", "--timeout", "10s", "--trace", "--input", full)
	var res playbooks.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || res.Escalated ||
		len(res.Decision.Actions) != 2 || res.Decision.Actions[0].Credential != "mailer-api" {
		t.Fatalf("eval: exit %d, %v\n%s", code, err, out)
	}
	if !strings.Contains(errs, "rego/killswitch/playbooks/exfiltration.rego") || !strings.Contains(errs, "Enter") {
		t.Errorf("no trace on stderr:\n%.500s", errs)
	}

	var doc map[string]json.RawMessage
	b, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	det := filepath.Join(dir, "detection.json")
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(det, doc["detection"], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte("vendors:\n  mailer:\n    credentials:\n      mailer-api:\n        kind: token\n        accessor: SECRET-ACCESSOR\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCLI(t, "playbook", "eval", "--timeout", "10s", "--trace", "--input", det, "--config", cfg)
	if code != 0 || strings.Contains(out+errs, "SECRET-ACCESSOR") || !strings.Contains(out, `"vault.revoke_token_accessor"`) {
		t.Errorf("bare detection: exit %d\n%s\n%.300s", code, out, errs)
	}

	if code, out, errs := runCLI(t, "playbook", "check", "--timeout", "10s"); code != 0 || !strings.Contains(out, "ok    exfil_critical") {
		t.Errorf("check: exit %d\n%s\n%s", code, out, errs)
	}
}

// TestPlaybookExportAndOldInputs: export writes the shipped library, which then tests the
// same from disk as embedded, and never overwrites a file; an example input in the old
// layout (inputs/NAME.json) fails test and check with the move that fixes it.
func TestPlaybookExportAndOldInputs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shipped")
	if code, out, errs := runCLI(t, "playbook", "export", dir); code != 0 || !strings.Contains(out, "opa test "+dir) {
		t.Fatalf("export: exit %d\n%s\n%s", code, out, errs)
	}
	embedded, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.Shipped()}, playbooks.TestOptions{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	exported, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.DirSource(dir)}, playbooks.TestOptions{Timeout: 10 * time.Second})
	if err != nil || !exported.OK() || exported.Passed != embedded.Passed || exported.Coverage.Percent != embedded.Coverage.Percent {
		t.Errorf("exported library: %v, %d passed (embedded %d), coverage %.1f%% (embedded %.1f%%)",
			err, exported.Passed, embedded.Passed, exported.Coverage.Percent, embedded.Coverage.Percent)
	}
	if code, _, errs := runCLI(t, "playbook", "export", dir); code != 1 || !strings.Contains(errs, "never overwritten") {
		t.Errorf("export over an existing library: exit %d\n%s", code, errs)
	}
	if code, _, _ := runCLI(t, "playbook", "export"); code != 2 {
		t.Errorf("export without a directory: exit %d, want 2", code)
	}

	b, err := os.ReadFile(filepath.Join("..", "..", "rego", "inputs", "exfil_critical", "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := writePlaybookDir(t, map[string]string{"cli.rego": cliPlaybook, "inputs/mailer_spike.json": string(b)})
	for _, sub := range []string{"test", "check"} {
		code, _, errs := runCLI(t, "playbook", sub, "--shipped", old)
		if code != 1 || !strings.Contains(errs, filepath.Join(old, "inputs", "mailer_spike.json")+": an example input directly in inputs/") ||
			!strings.Contains(errs, "move it to inputs/mailer_spike/data.json") {
			t.Errorf("%s on the old input layout: exit %d\n%s", sub, code, errs)
		}
	}
}
