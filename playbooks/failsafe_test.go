package playbooks_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// TestEvaluateFailsSafe evaluates playbooks that go wrong in every way the engine knows
// of: each must escalate (a notify, approval required, nothing destructive), record why,
// and name the playbook's file.
func TestEvaluateFailsSafe(t *testing.T) {
	revoke := `{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}`
	cases := []struct {
		name    string
		rules   string
		extra   map[string]string // more files
		mutate  func(*playbooks.Input)
		ctx     func() (context.Context, context.CancelFunc)
		timeout time.Duration
		want    playbooks.EscalationReason
		errHas  string
	}{
		{
			name:   "builtin error",
			rules:  `decision := {"actions": [` + revoke + `], "reason": sprintf("%d", [to_number(input.detection.reason)])}`,
			want:   playbooks.EscalationBuiltinError,
			errHas: "to_number",
		},
		{
			name: "deadline",
			rules: `decision := {"actions": [` + revoke + `], "reason": sprintf("%d", [n])} if {
	n := count([1 | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); i != j])
}`,
			timeout: 20 * time.Millisecond,
			want:    playbooks.EscalationTimeout,
		},
		{
			name: "caller canceled",
			rules: `decision := {"actions": [` + revoke + `], "reason": "never"} if {
	count([1 | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); i != j]) == 0
}`,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 10*time.Millisecond)
			},
			timeout: time.Minute,
			want:    playbooks.EscalationCanceled,
		},
		{
			name:   "unknown action type",
			rules:  `decision := {"actions": [{"type": "vault.nuke", "credential": "mailer-api"}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: `unknown action type "vault.nuke"`,
		},
		{
			name:   "500 targets",
			rules:  `decision := {"actions": [a | some i in numbers.range(1, 500); a := {"type": "vault.revoke_token_accessor", "credential": sprintf("mailer-%d", [i])}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: "500 actions exceed the bound of 16",
		},
		{
			name:   "wildcard credential",
			rules:  `decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-*"}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: "wildcard",
		},
		{
			name:   "credential outside the inventory",
			rules:  `decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "ghost"}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: `"ghost" is not in the inventory`,
		},
		{
			name:   "action of the wrong kind",
			rules:  `decision := {"actions": [{"type": "vault.destroy_secret_id", "credential": "mailer-api"}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: "does not apply",
		},
		{
			name:   "unknown decision field",
			rules:  `decision := {"actions": [` + revoke + `], "reason": "r", "force": true}`,
			want:   playbooks.EscalationMalformed,
			errHas: `unknown field "force"`,
		},
		{
			name:   "unknown action field",
			rules:  `decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-api", "path": "auth/token"}], "reason": "r"}`,
			want:   playbooks.EscalationMalformed,
			errHas: `field "path" is not allowed`,
		},
		{
			name:   "no reason",
			rules:  `decision := {"actions": [` + revoke + `]}`,
			want:   playbooks.EscalationMalformed,
			errHas: "reason: required",
		},
		{
			name:   "not an object",
			rules:  `decision := [` + revoke + `]`,
			want:   playbooks.EscalationMalformed,
			errHas: "want an object",
		},
		{
			name: "conflicting values",
			rules: `decision := {"actions": [` + revoke + `], "reason": "a"} if input.detection.severity == "critical"

decision := {"actions": [], "reason": "b"} if input.detection.detector == "spike"`,
			want:   playbooks.EscalationEvalError,
			errHas: "conflict",
		},
		{
			name:  "merged decision over the bound",
			rules: `decision := {"actions": [{"type": "notify", "message": sprintf("a%d", [i])} | some i in numbers.range(1, 9)], "reason": "r"}`,
			extra: map[string]string{"second.rego": playbookModule("second", "enforce",
				`decision := {"actions": [{"type": "notify", "message": sprintf("b%d", [i])} | some i in numbers.range(1, 9)], "reason": "r"}`)},
			want:   playbooks.EscalationTooManyTargets,
			errHas: "18 actions",
		},
		{
			name:   "invalid input",
			rules:  `decision := {"actions": [` + revoke + `], "reason": "r"}`,
			mutate: func(in *playbooks.Input) { in.Vendor.Name = "someone-else" },
			want:   playbooks.EscalationInvalidInput,
			errHas: "not the detection's vendor",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"case.rego": playbookModule("case", "enforce", tc.rules)}
			for k, v := range tc.extra {
				files[k] = v
			}
			writeFiles(t, dir, files)
			e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.DirSource(dir)}, Timeout: tc.timeout})
			in := shippedInput(t, "exfil_critical")
			if tc.mutate != nil {
				tc.mutate(&in)
			}
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			res := e.Evaluate(ctx, in)
			if !res.Escalated || res.Escalation != tc.want {
				t.Fatalf("escalated=%v reason=%q, want escalation %q; errors %v", res.Escalated, res.Escalation, tc.want, res.Errors)
			}
			assertEscalation(t, res)
			joined := strings.Join(res.Errors, "\n")
			if tc.errHas != "" && !strings.Contains(joined, tc.errHas) {
				t.Errorf("errors %q do not mention %q", joined, tc.errHas)
			}
			if tc.want == playbooks.EscalationMalformed && !strings.Contains(joined, filepath.Join(dir, "case.rego")+":") {
				t.Errorf("errors %q do not locate the playbook file", joined)
			}
		})
	}
}

// assertEscalation checks the shape every escalation has.
func assertEscalation(t *testing.T, res playbooks.Result) {
	t.Helper()
	d := res.Decision
	if len(destructive(d)) != 0 {
		t.Errorf("escalation carries destructive actions: %+v", d.Actions)
	}
	if !d.RequiresApproval || len(d.Actions) != 1 || d.Actions[0].Type != killswitch.ActionNotify || d.Actions[0].Mode != killswitch.ModeEnforce {
		t.Errorf("escalation decision = %+v, want one enforced notify and approval", d)
	}
	if len(res.Errors) == 0 || res.Revision == "" || res.ID == "" {
		t.Errorf("escalation not recorded: %+v", res)
	}
	if len(res.Matched) != 0 {
		t.Errorf("escalation lists matched playbooks %v", res.Matched)
	}
}

// TestEvaluateZeroActions: a playbook that decides, with reasons, to do nothing is
// a valid decision, not an escalation.
func TestEvaluateZeroActions(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"case.rego": playbookModule("case", "enforce",
		`decision := {"actions": [], "reason": "looked, nothing to do"} if input.detection.detector == "spike"`)})
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.DirSource(dir)}})
	res := e.Evaluate(context.Background(), shippedInput(t, "exfil_critical"))
	if res.Escalated || len(res.Decision.Actions) != 0 || res.Decision.RequiresApproval || len(res.Matched) != 0 {
		t.Fatalf("result = %+v, want no action and no escalation", res)
	}
	if res.Decision.Reason != "no playbook matched" || res.Decision.Actions == nil {
		t.Errorf("decision = %+v", res.Decision)
	}
}

// TestEvaluateDropsProtectedAndSilence: destructive actions against a protected
// credential, or on a silence detection, are dropped and recorded; the rest stands.
func TestEvaluateDropsProtectedAndSilence(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"case.rego": playbookModule("case", "enforce",
		`decision := {"actions": [
	{"type": "vault.revoke_token_accessor", "credential": "mailer-breakglass"},
	{"type": "vault.revoke_token_accessor", "credential": "mailer-api"},
	{"type": "notify", "message": "m"},
], "reason": "r"}`)})
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{playbooks.DirSource(dir)}})

	res := e.Evaluate(context.Background(), shippedInput(t, "exfil_critical"))
	if res.Escalated || len(res.Dropped) != 1 || res.Dropped[0].Action.Credential != "mailer-breakglass" ||
		res.Dropped[0].Reason != "protected credentials are never targets" {
		t.Fatalf("result = %+v, want mailer-breakglass dropped", res)
	}
	if d := destructive(res.Decision); len(d) != 1 || d[0].Credential != "mailer-api" {
		t.Errorf("destructive actions = %+v, want only mailer-api", d)
	}

	in := shippedInput(t, "exfil_critical")
	in.Detection.Detector = "silence"
	res = e.Evaluate(context.Background(), in)
	if res.Escalated || len(destructive(res.Decision)) != 0 || len(res.Dropped) != 2 {
		t.Fatalf("silence result = %+v, want both revocations dropped", res)
	}
	if res.Dropped[1].Reason != "silence is an alert, never a revocation" {
		t.Errorf("dropped = %+v", res.Dropped)
	}
}

// TestLoadErrors: every way a library can fail to load is a *CompileError naming the
// file and line.
func TestLoadErrors(t *testing.T) {
	meta := "# METADATA\n# title: T\n# description: D\n# custom:\n#   mode: enforce\npackage killswitch.playbooks.p\n\n"
	cases := []struct {
		name   string
		src    string
		line   int
		errHas string
	}{
		{"syntax error", meta + "decision := {\"actions\": [}\n", 8, "rego_parse_error"},
		{"typo'd entrypoint", meta + "# METADATA\n# entrypoint: true\ndefault decison := {\"actions\": []}\n", 8, "entrypoint must be the rule `decision`"},
		{"entrypoint on the package", "# METADATA\n# title: T\n# description: D\n# entrypoint: true\n# custom:\n#   mode: enforce\npackage killswitch.playbooks.p\n\ndefault decision := {\"actions\": []}\n", 1, "not on a package"},
		{"decision without entrypoint", meta + "default decision := {\"actions\": []}\n", 8, "not marked `entrypoint: true`"},
		{"no default", meta + "# METADATA\n# entrypoint: true\ndecision := {\"actions\": []} if input.x\n", 8, "has no default"},
		{"partial set", meta + "# METADATA\n# entrypoint: true\ndecision contains 1 if input.x\n", 10, "complete rule"},
		{"no mode", "# METADATA\n# title: T\n# description: D\npackage killswitch.playbooks.p\n\n# METADATA\n# entrypoint: true\ndefault decision := {\"actions\": []}\n", 1, "custom.mode must be"},
		{"bad mode", strings.Replace(meta, "enforce", "yolo", 1) + "# METADATA\n# entrypoint: true\ndefault decision := {\"actions\": []}\n", 1, `got "yolo"`},
		{"no title", strings.Replace(meta, "# title: T\n", "", 1) + "# METADATA\n# entrypoint: true\ndefault decision := {\"actions\": []}\n", 1, "title is required"},
		{"mode without entrypoint", meta + "x := 1\n", 1, "declares custom.mode but has no rule"},
		{"network builtin", meta + "# METADATA\n# entrypoint: true\ndefault decision := {\"actions\": []}\n\nx := http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1\"})\n", 12, "http.send"},
		{"strict mode", meta + "# METADATA\n# entrypoint: true\ndefault decision := {\"actions\": []}\n\nf(x) := 1\n", 12, "unused argument"},
		{"no playbook", "package killswitch.lib2\n\nx := 1\n", 0, "no playbook found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"p.rego": tc.src})
			_, err := playbooks.New(context.Background(), playbooks.Options{Sources: []playbooks.Source{playbooks.DirSource(dir)}})
			var ce *playbooks.CompileError
			if !errors.As(err, &ce) || !errors.Is(err, playbooks.ErrCompile) {
				t.Fatalf("err = %v, want a CompileError", err)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.errHas)
			}
			if tc.line == 0 {
				return
			}
			for _, p := range ce.Problems {
				if p.File == filepath.Join(dir, "p.rego") && p.Line == tc.line {
					return
				}
			}
			t.Errorf("problems %+v do not point at %s:%d", ce.Problems, filepath.Join(dir, "p.rego"), tc.line)
		})
	}
}
