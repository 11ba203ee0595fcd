package playbooks

import (
	"bytes"
	"context"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/killswitch-dev/killswitch/rego"
)

// TestTypoedEntrypointAtEvalTime: OPA answers a query for a rule that does not exist with
// an empty result and no error. Loading refuses such a playbook, but should one ever reach
// evaluation (the defence behind the load check), its undefined decision must escalate,
// not read as "no action".
func TestTypoedEntrypointAtEvalTime(t *testing.T) {
	ctx := context.Background()
	e, err := New(ctx, Options{Sources: []Source{Shipped()}, Timeout: time.Minute}) // a loaded machine must not turn this into a timeout
	if err != nil {
		t.Fatal(err)
	}
	lib, err := loadLibrary([]Source{Shipped()}, false)
	if err != nil {
		t.Fatal(err)
	}
	c, _, pbs, err := compileSet(lib, false, false)
	if err != nil {
		t.Fatal(err)
	}
	typo := -1
	for i, pb := range pbs {
		if pb.Name == "killswitch.playbooks.exfiltration" {
			typo = i
			pbs[i].ref = pb.ref[:len(pb.ref)-1].Append(ast.StringTerm("decison"))
		}
	}
	if typo < 0 {
		t.Fatal("exfiltration playbook not found")
	}
	snap, err := e.newSnapshot(ctx, c, pbs, "typo")
	if err != nil {
		t.Fatalf("preparing a query on a missing rule: %v (OPA accepts it, which is the point)", err)
	}
	e.cur.Store(snap)

	b, err := fs.ReadFile(rego.FS(), "inputs/exfil_critical/data.json")
	if err != nil {
		t.Fatal(err)
	}
	in, err := DecodeInput(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	res := e.Evaluate(ctx, in)
	if !res.Escalated || res.Escalation != EscalationUndefined {
		t.Fatalf("result = %+v, want an undefined escalation", res)
	}
	for _, a := range res.Decision.Actions {
		if a.Type.Destructive() {
			t.Fatalf("escalation carries %+v", a)
		}
	}
	if !strings.Contains(strings.Join(res.Errors, ""), "killswitch.playbooks.exfiltration") || res.Revision != "typo" {
		t.Errorf("result does not record the playbook or revision: %+v", res)
	}
}
