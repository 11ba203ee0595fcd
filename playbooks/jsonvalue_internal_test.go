package playbooks

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"testing"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/killswitch-dev/killswitch/rego"
)

// FuzzJSONToValue: the direct JSON conversion gives exactly the value OPA's own
// conversion gives, for every valid document, and rejects invalid ones.
func FuzzJSONToValue(f *testing.F) {
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
	for _, s := range []string{`{"a":1,"a":2}`, `[1.50, -0, 1e21, "\u00e9\n", true, false, null, {}]`, `"x"`, `{"a": [`, `01`, `{"a" 1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := jsonToValue(b)
		if !json.Valid(b) || !utf8.Valid(b) {
			if err == nil && !json.Valid(b) {
				t.Fatalf("accepted invalid JSON %q", b)
			}
			return
		}
		if err != nil {
			if bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) > maxJSONDepth {
				return // deeper than the bound
			}
			t.Fatalf("rejected valid JSON %q: %v", b, err)
		}
		want, err := ast.ValueFromReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("OPA rejects %q: %v", b, err)
		}
		if got.Compare(want) != 0 {
			t.Fatalf("jsonToValue(%q) = %v, OPA gives %v", b, got, want)
		}
	})
}
