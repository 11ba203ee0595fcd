package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/rego"
)

// copyShipped writes the shipped library to a directory an analyst could edit.
func copyShipped(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(rego.FS(), "killswitch", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(rego.FS(), p)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb lockedBuffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// lockedBuffer is a bytes.Buffer safe for the writes a command's asynchronous
// callbacks (a NATS connection closing) may still make after it returned.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Without --config, the credentials seen in the telemetry are planned unmapped: the
// replay has a containment figure and says how many credentials to add to the inventory;
// --unmapped=false plans only what the (empty) inventory lists, which is nothing.
func TestReplayZeroConfigUnmapped(t *testing.T) {
	dir := t.TempDir()
	tel := filepath.Join(dir, "t.ndjson.gz")
	if code, _, stderr := run(t, "generate", "--seed", "5", "--days", "12", "--vendors", "4", "--out", tel); code != 0 {
		t.Fatalf("generate: %d %s", code, stderr)
	}
	type report struct {
		Summary struct {
			Contained           int `json:"contained"`
			UnmappedCredentials int `json:"unmapped_credentials"`
			ContainedUnmapped   int `json:"contained_unmapped"`
		} `json:"summary"`
		Incidents []struct {
			ExposureWindowSeconds *float64 `json:"exposure_window_seconds"`
			Actions               []struct {
				Target   string `json:"target"`
				Status   string `json:"status"`
				Unmapped bool   `json:"unmapped"`
			} `json:"actions"`
		} `json:"incidents"`
	}
	replayJSON := func(args ...string) (report, string) {
		t.Helper()
		out := filepath.Join(dir, "r.json")
		code, stdout, stderr := run(t, append([]string{"replay", "--telemetry", tel, "--json", out}, args...)...)
		if code != 0 {
			t.Fatalf("replay %v: %d %s %s", args, code, stdout, stderr)
		}
		var rep report
		b, _ := os.ReadFile(out)
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatal(err)
		}
		return rep, stdout
	}
	rep, stdout := replayJSON()
	s := rep.Summary
	if s.Contained == 0 || s.UnmappedCredentials == 0 || s.ContainedUnmapped != s.Contained {
		t.Fatalf("zero config: summary %+v: want incidents contained through unmapped credentials\n%s", s, stdout)
	}
	if !regexp.MustCompile(`\d+ contained, exposure window median`).MatchString(stdout) ||
		!strings.Contains(stdout, "unmapped credential(s) targeted in the plan only") {
		t.Fatalf("the text summary has no containment figure or unmapped count:\n%s", stdout)
	}
	unmapped := 0
	for _, in := range rep.Incidents {
		for _, a := range in.Actions {
			if a.Status == "applied" || a.Status == "verified" {
				t.Fatalf("without --vault an action was %s", a.Status)
			}
			if a.Unmapped {
				unmapped++
				if !strings.HasPrefix(a.Target, "unmapped: add ") {
					t.Fatalf("unmapped target %q", a.Target)
				}
			}
		}
	}
	if unmapped == 0 {
		t.Fatal("no action marked unmapped")
	}
	if rep, stdout := replayJSON("--unmapped=false"); rep.Summary.Contained != 0 || rep.Summary.UnmappedCredentials != 0 || strings.Contains(stdout, "unmapped") {
		t.Fatalf("--unmapped=false: summary %+v\n%s", rep.Summary, stdout)
	}
}

func TestReplayCommand(t *testing.T) {
	dir := t.TempDir()
	tel, cfg := filepath.Join(dir, "t.ndjson.gz"), filepath.Join(dir, "inventory.yaml")
	if code, _, stderr := run(t, "generate", "--seed", "5", "--days", "12", "--vendors", "4", "--out", tel, "--config-out", cfg); code != 0 {
		t.Fatalf("generate: %d %s", code, stderr)
	}
	jsonOut, htmlOut := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	code, stdout, stderr := run(t, "replay", "--telemetry", tel, "--config", cfg, "--json", jsonOut, "--report", htmlOut)
	if code != 0 || !strings.Contains(stdout, "incidents") {
		t.Fatalf("replay: %d %s %s", code, stdout, stderr)
	}
	var rep struct {
		Events    int64 `json:"events"`
		Incidents []struct {
			ContainedAt *string `json:"contained_at"`
			Actions     []struct {
				Status string `json:"status"`
			} `json:"actions"`
		} `json:"incidents"`
	}
	b, _ := os.ReadFile(jsonOut)
	if err := json.Unmarshal(b, &rep); err != nil || rep.Events == 0 || len(rep.Incidents) == 0 {
		t.Fatalf("report %s: %v", b, err)
	}
	planned := 0
	for _, in := range rep.Incidents {
		for _, a := range in.Actions {
			if a.Status == "planned" {
				planned++
			}
			if a.Status == "applied" || a.Status == "verified" {
				t.Fatalf("without --vault an action was %s", a.Status)
			}
		}
	}
	if planned == 0 {
		t.Fatal("no action planned")
	}
	if h, _ := os.ReadFile(htmlOut); !bytes.HasPrefix(h, []byte("<!DOCTYPE html>")) {
		t.Fatal("no HTML report")
	}

	// Shadow comparison: a candidate library where critical exfiltration needs approval.
	old, next := copyShipped(t), copyShipped(t)
	p := filepath.Join(next, "killswitch/playbooks/exfiltration.rego")
	src, _ := os.ReadFile(p)
	changed := strings.Replace(string(src), `"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"reason": sprintf("critical %s on %s: revoking`, `"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"requires_approval": true,
	"reason": sprintf("critical %s on %s: revoking`, 1)
	if changed == string(src) {
		t.Fatal("could not edit the candidate playbook")
	}
	if err := os.WriteFile(p, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = run(t, "replay", "--telemetry", tel, "--config", cfg, "--playbooks", next, "--baseline-playbooks", old, "--json", filepath.Join(dir, "flips.json"))
	if code != 0 || !strings.Contains(stdout, "flip between the baseline and the new playbooks") || !strings.Contains(stdout, "(approval)") {
		t.Fatalf("shadow comparison: %d\n%s\n%s", code, stdout, stderr)
	}

	// Bad input: a clear error, exit code 1 or 2.
	if code, _, stderr := run(t, "replay", "--telemetry", filepath.Join(dir, "missing.ndjson")); code != 1 || !strings.Contains(stderr, "missing.ndjson") {
		t.Fatalf("missing file: %d %s", code, stderr)
	}
	if code, _, _ := run(t, "replay"); code != 2 {
		t.Fatalf("no source: %d", code)
	}
}

// A tabletop exercise against a real dev Vault: the revocations the replay decides are
// applied and verified, and only those tokens die.
func TestReplayAgainstDevVault(t *testing.T) {
	v := testharness.DevVault(t)
	root := v.Client(t)
	ctx := context.Background()
	dir := t.TempDir()
	tel, cfg := filepath.Join(dir, "t.ndjson.gz"), filepath.Join(dir, "inventory.yaml")
	if code, _, stderr := run(t, "generate", "--seed", "5", "--days", "12", "--vendors", "4", "--out", tel, "--config-out", cfg); code != 0 {
		t.Fatalf("generate: %d %s", code, stderr)
	}
	// Give every credential of the generated inventory a real token.
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{} // credential → token
	re := regexp.MustCompile(`accessor: acc-([a-z0-9-]+)`)
	text := re.ReplaceAllStringFunc(string(b), func(m string) string {
		sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"default"}, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		tokens[re.FindStringSubmatch(m)[1]] = sec.Auth.ClientToken
		return "accessor: " + sec.Auth.Accessor
	})
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	code, policy, stderr := run(t, "vault", "policy", "--config", cfg)
	if code != 0 {
		t.Fatalf("vault policy: %d %s", code, stderr)
	}
	t.Setenv("VAULT_TOKEN", policyToken(t, root, "killswitch", policy))
	jsonOut := filepath.Join(dir, "r.json")
	if code, stdout, stderr := run(t, "replay", "--telemetry", tel, "--config", cfg, "--vault", v.Addr, "--json", jsonOut); code != 0 {
		t.Fatalf("replay --vault: %d %s %s", code, stdout, stderr)
	}
	var rep struct {
		Incidents []struct {
			Credential string `json:"credential"`
			Actions    []struct {
				Type   string `json:"type"`
				Target string `json:"target"` // "<vendor>/<credential> token accessor fp:…"
				Status string `json:"status"`
			} `json:"actions"`
		} `json:"incidents"`
	}
	if b, err = os.ReadFile(jsonOut); err != nil || json.Unmarshal(b, &rep) != nil {
		t.Fatalf("report: %v %s", err, b)
	}
	revoked := map[string]bool{}
	for _, in := range rep.Incidents {
		for _, a := range in.Actions {
			if a.Type == "vault.revoke_token_accessor" {
				if a.Status != "verified" && a.Status != "held" {
					t.Errorf("%s on %s: %s, want verified (or held by a guard rail)", a.Type, a.Target, a.Status)
				}
				_, cred, _ := strings.Cut(strings.Fields(a.Target)[0], "/")
				revoked[cred] = revoked[cred] || a.Status == "verified"
			}
		}
	}
	if len(revoked) == 0 {
		t.Fatal("the exercise revoked nothing")
	}
	for cred, tok := range tokens {
		c := v.Client(t)
		c.SetToken(tok)
		_, err := c.Auth().Token().LookupSelf()
		if dead := err != nil; dead != revoked[cred] {
			t.Errorf("%s: dead=%t, revoked by the replay=%t", cred, dead, revoked[cred])
		}
	}
}
