package playbooks_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// The decision's veto_window: a duration string between MinVetoWindow and
// MaxVetoWindow, anything else malformed; it survives a JSON round trip as the string.
func TestParseDecisionVetoWindow(t *testing.T) {
	revoke := `{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}`
	cases := []struct {
		name, window string // window: the JSON value
		want         time.Duration
		errHas       string
	}{
		{name: "seconds", window: `"90s"`, want: 90 * time.Second},
		{name: "minutes", window: `"5m"`, want: 5 * time.Minute},
		{name: "the longest", window: `"1h"`, want: time.Hour},
		{name: "the shortest", window: `"1s"`, want: time.Second},
		{name: "zero", window: `"0s"`, errHas: "shorter than 1s"},
		{name: "negative", window: `"-5s"`, errHas: "shorter than 1s"},
		{name: "too long", window: `"61m"`, errHas: "longer than 1h0m0s"},
		{name: "a number", window: `90`, errHas: "want a duration string"},
		{name: "no unit", window: `"90"`, errHas: "is not a duration"},
		{name: "null", window: `null`, errHas: "want a duration string"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := playbooks.ParseDecisionJSON([]byte(`{"actions": [`+revoke+`], "reason": "r", "veto_window": `+c.window+`}`), 16)
			if c.errHas != "" {
				if !errors.Is(err, playbooks.ErrMalformed) || !strings.Contains(err.Error(), "veto_window: ") || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("err = %v, want ErrMalformed about veto_window containing %q", err, c.errHas)
				}
				return
			}
			if err != nil || d.VetoWindow.D() != c.want {
				t.Fatalf("veto window %s, %v; want %s", d.VetoWindow, err, c.want)
			}
			b, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			var back playbooks.Decision
			if err := json.Unmarshal(b, &back); err != nil || back.VetoWindow != d.VetoWindow || !strings.Contains(string(b), `"veto_window":"`+c.want.String()+`"`) {
				t.Fatalf("round trip %s: %+v, %v", b, back, err)
			}
		})
	}
	d, err := playbooks.ParseDecisionJSON([]byte(`{"actions": []}`), 16)
	if err != nil || d.VetoWindow != 0 {
		t.Fatalf("no veto window: %+v, %v", d, err)
	}
	if b, _ := json.Marshal(d); strings.Contains(string(b), "veto_window") {
		t.Fatalf("a decision without a window writes one: %s", b)
	}
}

// The example playbook of the veto-window flow passes its Rego tests, and the engine
// gives its decision the window; merged with a playbook asking for a shorter one (or
// none), the longest window wins, and an escalation never carries one.
func TestVetoWindowExampleAndMerge(t *testing.T) {
	ctx := context.Background()
	example := playbooks.DirSource("testdata/veto_window")
	rep, err := playbooks.Test(ctx, []playbooks.Source{example}, playbooks.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Passed != 3 {
		t.Fatalf("the example's Rego tests: %+v", rep.Results)
	}
	in := shippedInput(t, "exfil_critical")
	in.Detection.Detector = "cap"
	in.Detection.Credential = "mailer-api"
	res := newEngine(t, playbooks.Options{Sources: []playbooks.Source{example}, PollInterval: -1}).Evaluate(ctx, in)
	if res.Escalated || res.Decision.VetoWindow.D() != 90*time.Second || len(destructive(res.Decision)) != 1 {
		t.Fatalf("the example's decision: %+v (errors %v)", res.Decision, res.Errors)
	}

	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"short.rego": playbookModule("short", "enforce", `decision := {"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}], "reason": "short", "veto_window": "10s"}`),
		"none.rego":  playbookModule("none", "enforce", `decision := {"actions": [{"type": "notify", "message": "m"}], "reason": "none"}`),
	})
	res = newEngine(t, playbooks.Options{Sources: []playbooks.Source{example, playbooks.DirSource(dir)}, PollInterval: -1}).Evaluate(ctx, in)
	if res.Escalated || res.Decision.VetoWindow.D() != 90*time.Second || len(res.Matched) != 3 {
		t.Fatalf("merged: %+v matched %v", res.Decision, res.Matched)
	}
	writeFiles(t, dir, map[string]string{
		"bad.rego": playbookModule("bad", "enforce", `decision := {"actions": [{"type": "notify", "message": "m"}], "reason": "bad", "veto_window": "2h"}`),
	})
	res = newEngine(t, playbooks.Options{Sources: []playbooks.Source{example, playbooks.DirSource(dir)}, PollInterval: -1}).Evaluate(ctx, in)
	if !res.Escalated || res.Decision.VetoWindow != 0 || len(destructive(res.Decision)) != 0 || res.Decision.Actions[0].Type != killswitch.ActionNotify {
		t.Fatalf("a window over the bound must escalate without a window: %+v", res.Decision)
	}
}
