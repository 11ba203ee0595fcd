package playbooks_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/rego"
)

// FuzzParseDecisionJSON: the decision parser never panics, rejects with ErrMalformed, and
// whatever it accepts is within the closed schema.
func FuzzParseDecisionJSON(f *testing.F) {
	for _, s := range []string{
		`{"actions": []}`,
		`{"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}], "reason": "r", "severity": "critical"}`,
		`{"actions": [{"type": "notify", "message": "m"}], "requires_approval": true, "reason": "r"}`,
		`{"actions": [{"type": "nats.publish", "subject": "egress.block", "credential": "c"}], "reason": "r"}`,
		`{"actions": [{"type": "webhook", "webhook": "soc"}], "reason": "r"}`,
		`{"actions": [{"type": "vault.nuke"}], "reason": "r"}`,
		`{"actions": [{"type": "vault.revoke_lease", "credential": "a*"}], "reason": "r"}`,
		`{"actions": {}, "extra": 1}`,
		`[]`, `null`, `"x"`, `{"actions": [1, null, "a"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := playbooks.ParseDecisionJSON(b, 16)
		if err != nil {
			if !errors.Is(err, playbooks.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(d.Actions) > 16 {
			t.Fatalf("accepted %d actions", len(d.Actions))
		}
		if (len(d.Actions) > 0 || d.RequiresApproval) && strings.TrimSpace(d.Reason) == "" {
			t.Fatal("accepted a decision without a reason")
		}
		for _, a := range d.Actions {
			if !a.Type.Known() || a.Mode != "" || a.Playbooks != nil {
				t.Fatalf("accepted action %+v", a)
			}
			if a.Type.Destructive() && (a.Credential == "" || a.Subject != "" || a.Webhook != "" || a.Message != "") {
				t.Fatalf("accepted destructive action %+v", a)
			}
			for _, name := range []string{a.Credential, a.Subject, a.Webhook} {
				if strings.ContainsAny(name, "*?[]{}>%") {
					t.Fatalf("accepted wildcard in %+v", a)
				}
			}
		}
		// What was accepted survives a round trip unchanged.
		again, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if d2, err := playbooks.ParseDecisionJSON(again, 16); err != nil || len(d2.Actions) != len(d.Actions) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzDecodeInput: the input decoder never panics, rejects with ErrInvalidInput, and
// what it accepts validates and hashes.
func FuzzDecodeInput(f *testing.F) {
	ents, err := fs.ReadDir(rego.FS(), "inputs")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		b, err := fs.ReadFile(rego.FS(), "inputs/"+e.Name()+"/data.json")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"detection": {"vendor": "v", "detector": "spike", "severity": "low"}, "vendor": {"name": "v"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := playbooks.DecodeInput(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, playbooks.ErrInvalidInput) {
				t.Fatalf("error %v does not wrap ErrInvalidInput", err)
			}
			return
		}
		if err := in.Validate(); err != nil {
			t.Fatalf("accepted an invalid input: %v", err)
		}
		if _, err := in.Hash(); err != nil {
			t.Fatal(err)
		}
	})
}
