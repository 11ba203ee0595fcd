package playbooks_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/playbooks"
)

var update = flag.Bool("update", false, "rewrite the golden decisions in testdata/golden")

// TestShippedLibrary runs the shipped _test.rego files through OPA's tester and requires
// every test to pass and the playbooks to be at least 90% covered.
func TestShippedLibrary(t *testing.T) {
	rep, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.Shipped()}, playbooks.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if !r.Pass {
			t.Errorf("FAIL %s (%s:%d) %s %s", r.Name, r.File, r.Line, r.Error, r.Output)
		}
	}
	if !rep.OK() || rep.Passed < 40 {
		t.Fatalf("passed %d, failed %d: want every one of at least 40 tests to pass", rep.Passed, rep.Failed)
	}
	if rep.Coverage.Percent < 90 {
		t.Errorf("coverage %.1f%%, want ≥ 90%%: %+v", rep.Coverage.Percent, rep.Coverage.Files)
	}
	if len(rep.Coverage.Files) != 9 {
		t.Errorf("coverage lists %d policy files, want the 9 non-test modules", len(rep.Coverage.Files))
	}
	t.Logf("%d tests passed, coverage %.1f%%", rep.Passed, rep.Coverage.Percent)
}

// TestTesterReportsFailuresAndPartialCoverage: a failing Rego test fails the run, and
// running a subset of the tests lowers the coverage (it is measured, not assumed).
func TestTesterReportsFailuresAndPartialCoverage(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego": playbookModule("p", "shadow", `decision := {"actions": [{"type": "notify", "message": "m"}], "reason": "r"} if input.detection.detector == "spike"

decision := {"actions": [], "reason": "other"} if input.detection.detector == "cap"`),
		"p_test.rego": `package killswitch.playbooks.p_test

import data.killswitch.playbooks.p

test_notifies_on_spike if {
	d := p.decision with input as data.inputs.example
	count(d.actions) == 1
}

test_wrong_on_purpose if {
	d := p.decision with input as data.inputs.example
	count(d.actions) == 2
}
`,
		"inputs/example/data.json": mustJSON(t, shippedInput(t, "exfil_critical")),
	})
	rep, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.DirSource(dir)}, playbooks.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Passed != 1 || rep.Failed != 1 {
		t.Fatalf("passed %d failed %d, want 1 and 1", rep.Passed, rep.Failed)
	}
	for _, r := range rep.Results {
		if r.Name == "killswitch.playbooks.p_test.test_wrong_on_purpose" && (r.Pass || r.Line != 10 || r.File != filepath.Join(dir, "p_test.rego")) {
			t.Errorf("failing test reported as %+v", r)
		}
	}
	if c := rep.Coverage; c.Percent <= 0 || c.Percent >= 100 || len(c.Files) != 1 || len(c.Files[0].NotCoveredLines) == 0 {
		t.Errorf("coverage = %+v, want partial coverage of p.rego with the cap branch uncovered", c)
	}

	full, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.Shipped()}, playbooks.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.Shipped()}, playbooks.TestOptions{Run: "exfiltration"})
	if err != nil {
		t.Fatal(err)
	}
	if part.Passed >= full.Passed || part.Coverage.Percent >= full.Coverage.Percent-20 {
		t.Errorf("a subset ran %d tests for %.1f%%, the whole %d for %.1f%%", part.Passed, part.Coverage.Percent, full.Passed, full.Coverage.Percent)
	}
}

// TestTesterRejectsBadInputs: an example input outside the Input schema fails the run
// with its file named.
func TestTesterRejectsBadInputs(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego":                  playbookModule("p", "shadow", ""),
		"inputs/broken/data.json": `{"detection": {"vendor": "x"}, "surprise": 1}`,
	})
	_, err := playbooks.Test(context.Background(), []playbooks.Source{playbooks.DirSource(dir)}, playbooks.TestOptions{})
	if !errors.Is(err, playbooks.ErrCompile) || !strings.Contains(err.Error(), filepath.Join(dir, "inputs", "broken", "data.json")) ||
		!strings.Contains(err.Error(), "surprise") {
		t.Fatalf("err = %v", err)
	}
}

// TestCheckShippedLibrary: every shipped example input gives a decision within the schema,
// without escalation or dropped action.
func TestCheckShippedLibrary(t *testing.T) {
	rep, err := playbooks.Check(context.Background(), []playbooks.Source{playbooks.Shipped()}, playbooks.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || len(rep.Inputs) != len(shippedInputNames(t)) || len(rep.Playbooks) != 8 {
		t.Fatalf("check = %+v", rep)
	}
}

// TestCheckFindsBadDecisions: Check flags an input whose decision escalates or drops.
func TestCheckFindsBadDecisions(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego": playbookModule("p", "enforce", `decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-breakglass"}], "reason": "r"} if input.detection.detector == "spike"

decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "nobody"}], "reason": "r"} if input.detection.detector == "sustained"`),
		"inputs/spike/data.json":     mustJSON(t, shippedInput(t, "exfil_critical")),
		"inputs/sustained/data.json": mustJSON(t, shippedInput(t, "sustained_first")),
		"inputs/silence/data.json":   mustJSON(t, shippedInput(t, "silence")),
	})
	rep, err := playbooks.Check(context.Background(), []playbooks.Source{playbooks.DirSource(dir)}, playbooks.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("check passed")
	}
	got := map[string]string{}
	for _, in := range rep.Inputs {
		got[in.Name] = strings.Join(in.Problems, "; ")
	}
	if !strings.Contains(got["spike"], "dropped: protected") || !strings.Contains(got["sustained"], "escalated (malformed)") || got["silence"] != "" {
		t.Errorf("problems = %q", got)
	}
}

// TestGoldenDecisions compares the engine's result on every shipped input with
// testdata/golden/NAME.json (go test -run TestGoldenDecisions -update rewrites them).
func TestGoldenDecisions(t *testing.T) {
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}})
	for _, name := range shippedInputNames(t) {
		t.Run(name, func(t *testing.T) {
			res := e.Evaluate(context.Background(), shippedInput(t, name))
			if res.Escalated {
				t.Fatalf("escalated: %v", res.Errors)
			}
			got, err := json.MarshalIndent(res, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("decision differs from %s (run with -update if intended):\n%s", path, got)
			}
		})
	}
}

// TestMergeIsDeterministic: playbooks asking for the same action yield it once, with
// every requester and the strongest mode; approval from any holds the decision; the worst
// severity wins; evaluating again gives the same result.
func TestMergeIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	revoke := `{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}`
	writeFiles(t, dir, map[string]string{
		"a.rego": playbookModule("a", "shadow", `decision := {"actions": [`+revoke+`, {"type": "notify", "message": "same"}], "reason": "ra", "severity": "medium"}`),
		"b.rego": playbookModule("b", "enforce", `decision := {"actions": [{"type": "notify", "message": "same"}, `+revoke+`, {"type": "webhook", "webhook": "soc"}], "reason": "rb", "severity": "high"}`),
		"c.rego": playbookModule("c", "dry-run", `decision := {"actions": [{"type": "nats.publish", "subject": "egress.block.mailer", "credential": "mailer-api"}], "requires_approval": true, "reason": "rc"}`),
		"d.rego": playbookModule("d", "enforce", `decision := {"actions": [], "reason": "rd"}`),
	})
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.DirSource(dir)}})
	in := shippedInput(t, "spike_medium")
	res := e.Evaluate(context.Background(), in)
	if res.Escalated {
		t.Fatal(res.Errors)
	}
	want := []playbooks.Action{
		{Type: killswitch.ActionRevokeTokenAccessor, Credential: "mailer-api", Mode: killswitch.ModeEnforce, Playbooks: []string{"killswitch.playbooks.a", "killswitch.playbooks.b"}},
		{Type: killswitch.ActionNATSPublish, Credential: "mailer-api", Subject: "egress.block.mailer", Mode: killswitch.ModeDryRun, Playbooks: []string{"killswitch.playbooks.c"}},
		{Type: killswitch.ActionWebhook, Webhook: "soc", Mode: killswitch.ModeEnforce, Playbooks: []string{"killswitch.playbooks.b"}},
		{Type: killswitch.ActionNotify, Message: "same", Mode: killswitch.ModeEnforce, Playbooks: []string{"killswitch.playbooks.a", "killswitch.playbooks.b"}},
	}
	if !reflect.DeepEqual(res.Decision.Actions, want) {
		t.Errorf("actions =\n%+v\nwant\n%+v", res.Decision.Actions, want)
	}
	if !res.Decision.RequiresApproval || res.Decision.Severity != "high" ||
		res.Decision.Reason != "killswitch.playbooks.a: ra; killswitch.playbooks.b: rb; killswitch.playbooks.c: rc" {
		t.Errorf("decision = %+v", res.Decision)
	}
	if !reflect.DeepEqual(res.Matched, []string{"killswitch.playbooks.a", "killswitch.playbooks.b", "killswitch.playbooks.c"}) {
		t.Errorf("matched = %v", res.Matched)
	}
	for i := 0; i < 20; i++ {
		if again := e.Evaluate(context.Background(), in); !reflect.DeepEqual(again, res) {
			t.Fatalf("evaluation %d differs:\n%+v\n%+v", i, again, res)
		}
	}
}

// TestResultRecord: the decision ID depends on the detection and the revision only; the
// input hash on the input's content, not on how its times are zoned; the clock fills a
// missing now.
func TestResultRecord(t *testing.T) {
	now := time.Date(2026, 2, 5, 10, 1, 13, 0, time.UTC)
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, Clock: clockAt(now)})
	in := shippedInput(t, "exfil_critical")
	res := e.Evaluate(context.Background(), in)
	if res.ID != playbooks.DecisionID(in.Detection.ID, e.Revision()) || res.Revision != e.Revision() || len(res.Revision) != 64 {
		t.Errorf("id %q revision %q", res.ID, res.Revision)
	}
	h, err := in.Hash()
	if err != nil || res.InputHash != h {
		t.Errorf("input hash %q, want %q (%v)", res.InputHash, h, err)
	}

	zoned := in
	zoned.Now = in.Now.In(time.FixedZone("X", 5*3600))
	zoned.Detection.DetectedAt = in.Detection.DetectedAt.In(time.FixedZone("Y", -3600))
	if r := e.Evaluate(context.Background(), zoned); r.InputHash != res.InputHash {
		t.Errorf("the same instants in other zones changed the input hash")
	}
	other := in
	other.Budget.Remaining = 9
	if r := e.Evaluate(context.Background(), other); r.InputHash == res.InputHash || r.ID != res.ID {
		t.Errorf("changed input: hash %q id %q", r.InputHash, r.ID)
	}

	noNow := in
	noNow.Now = time.Time{}
	withNow := in
	withNow.Now = now
	if a, b := e.Evaluate(context.Background(), noNow), e.Evaluate(context.Background(), withNow); a.InputHash != b.InputHash {
		t.Errorf("zero now was not filled from the clock")
	}
}

// TestVendorViewHasNoSecrets: the view of a vendor built from the inventory carries the
// kind, action and flags of each credential, never its Vault identity.
func TestVendorViewHasNoSecrets(t *testing.T) {
	v := killswitch.Vendor{Owner: "team", Credentials: map[string]killswitch.Credential{
		"api":    {Kind: killswitch.CredTokenAccessor, Accessor: "acc-SECRET-1"},
		"batch":  {Kind: killswitch.CredAppRoleSecretID, Role: "role-SECRET-2", SecretIDAccessor: "sid-SECRET-3"},
		"db":     {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/SECRET-4"},
		"static": {Kind: killswitch.CredKV, Path: "vendors/SECRET-5"},
		"pol":    {Kind: killswitch.CredPolicy, Policy: "SECRET-6", Protected: true},
		"one":    {Kind: killswitch.CredLease, LeaseID: "lease/SECRET-7"},
	}}
	view := playbooks.NewVendorView("mailer", &v)
	b, err := json.Marshal(view)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "SECRET") {
		t.Fatalf("vendor view leaks Vault identities: %s", b)
	}
	if c := view.Credentials["pol"]; c.Action != killswitch.ActionQuarantinePolicy || !c.Protected || !view.Known {
		t.Errorf("view = %+v", view)
	}
	if unknown := playbooks.NewVendorView("x", nil); unknown.Known || unknown.Credentials == nil {
		t.Errorf("unknown vendor view = %+v", unknown)
	}
}

// TestDecodeInputRejects: unknown fields, trailing data, inconsistent documents.
func TestDecodeInputRejects(t *testing.T) {
	good := mustJSON(t, shippedInput(t, "exfil_critical"))
	cases := map[string]string{
		"unknown field":    strings.Replace(good, `"budget":`, `"budgett": {}, "budget":`, 1),
		"trailing data":    good + "{}",
		"unknown detector": strings.Replace(good, `"detector":"spike"`, `"detector":"vibes"`, 1),
		"wrong vendor":     strings.Replace(good, `"name":"mailer"`, `"name":"other"`, 1),
		"action mismatch":  strings.Replace(good, `"action":"vault.destroy_secret_id"`, `"action":"vault.revoke_lease"`, 1),
		"no vendor":        strings.Replace(strings.Replace(good, `"vendor":"mailer"`, `"vendor":""`, 1), `"name":"mailer"`, `"name":""`, 1),
		"not json":         "detection: x",
	}
	if _, err := playbooks.DecodeInput(strings.NewReader(good)); err != nil {
		t.Fatalf("good input: %v", err)
	}
	for name, doc := range cases {
		if doc == good {
			t.Fatalf("%s: replacement did not apply", name)
		}
		if _, err := playbooks.DecodeInput(strings.NewReader(doc)); !errors.Is(err, playbooks.ErrInvalidInput) {
			t.Errorf("%s: err = %v, want ErrInvalidInput", name, err)
		}
	}
}

// TestSensorSilenceIsDecided: a sensor silent for every vendor has no vendor; the
// input is valid and the shipped silence playbook notifies about the sensor (before,
// the input was refused and the decision escalated as invalid).
func TestSensorSilenceIsDecided(t *testing.T) {
	in := shippedInput(t, "silence")
	in.Detection.Vendor = ""
	in.Vendor = playbooks.NewVendorView("", nil)
	if err := in.Validate(); err != nil {
		t.Fatalf("a sensor's silence: %v", err)
	}
	res := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}}).Evaluate(context.Background(), in)
	if res.Escalated || len(res.Decision.Actions) != 1 || res.Decision.Actions[0].Type != killswitch.ActionNotify ||
		!strings.HasPrefix(res.Decision.Actions[0].Message, "Killswitch: telemetry from sensor egress-gw-1 stopped") {
		t.Fatalf("result = %+v, want one notification about sensor egress-gw-1", res)
	}
	in.Detection.Sensor = ""
	if err := in.Validate(); !errors.Is(err, playbooks.ErrInvalidInput) {
		t.Fatalf("a silence with neither vendor nor sensor: err = %v, want ErrInvalidInput", err)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type clockAt time.Time

func (c clockAt) Now() time.Time { return time.Time(c) }
