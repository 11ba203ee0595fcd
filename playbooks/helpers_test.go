package playbooks_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/rego"
)

// shippedInput decodes one of the shipped example inputs.
func shippedInput(t testing.TB, name string) playbooks.Input {
	t.Helper()
	b, err := fs.ReadFile(rego.FS(), "inputs/"+name+"/data.json")
	if err != nil {
		t.Fatal(err)
	}
	in, err := playbooks.DecodeInput(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// shippedInputNames lists the shipped example inputs.
func shippedInputNames(t testing.TB) []string {
	t.Helper()
	ents, err := fs.ReadDir(rego.FS(), "inputs")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// writeFiles writes files (path relative to dir -> content) under dir.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// playbookModule returns a complete playbook package named pkg whose decision rules are
// rules (written after the default).
func playbookModule(pkg, mode, rules string) string {
	return `# METADATA
# title: Test playbook ` + pkg + `
# description: A playbook written by a test.
# custom:
#   mode: ` + mode + `
package killswitch.playbooks.` + pkg + `

# METADATA
# entrypoint: true
default decision := {"actions": []}

` + rules + "\n"
}

// newEngine builds an engine on sources with a fixed stopwatch, so results are
// deterministic. Unless a test sets its own deadline (the fail-safe tests do), the
// evaluation deadline is a minute: under -race on a loaded two-core machine one
// evaluation can take longer than the 50 ms default, and a test about something else
// would see a timeout escalation.
func newEngine(t testing.TB, opts playbooks.Options) *playbooks.Engine {
	t.Helper()
	if opts.Stopwatch == nil {
		opts.Stopwatch = clock.NewManual(time.Unix(0, 0))
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Minute
	}
	e, err := playbooks.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// destructive returns the destructive actions of a decision.
func destructive(d playbooks.Decision) []playbooks.Action {
	var out []playbooks.Action
	for _, a := range d.Actions {
		if a.Type.Destructive() {
			out = append(out, a)
		}
	}
	return out
}
