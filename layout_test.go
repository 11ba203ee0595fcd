package killswitch_test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/killswitch-dev/killswitch"

// pkg is what `go list` says of one package.
type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// rel returns p relative to the module ("" for the root package).
func rel(p string) string { return strings.TrimPrefix(strings.TrimPrefix(p, module), "/") }

// stageOf returns the stage a package belongs to (its first path element) and its rank
// in the flow; -1 for packages that are not a stage.
func stageOf(p string) (string, int) {
	first, _, _ := strings.Cut(rel(p), "/")
	i := slices.Index(flow, first)
	return first, i
}

// flow is the one-way flow of DESIGN.md. Each stage imports only what is upstream of it;
// the ledger is a leaf that every stage may append to.
var flow = []string{"telemetry", "detectors", "incidents", "playbooks", "actions", "ledger"}

// TestLayout keeps the layout of DESIGN.md true: the domain core imports nothing of the
// module; each stage imports only the stages upstream of it (and the ledger, a leaf that
// imports no stage); stages and the ledger stay free of NATS in their root packages
// (NATS implementations live in subpackages named after the dependency); the
// configuration is composed only by cmd and the service wiring; internal/ holds only
// process plumbing and test tooling; every package says what it is.
func TestLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	natsFree := map[string]bool{"telemetry": true, "detectors": true, "incidents": true, "playbooks": true, "actions": true, "ledger": true, "pipeline": true}
	wiring := func(p string) bool {
		r := rel(p)
		return strings.HasPrefix(r, "cmd/") || r == "service" || r == "demo"
	}
	internalAllowed := []string{"internal/devvault", "internal/devvault/prebuild", "internal/embeddednats", "internal/natsconn", "internal/testharness"}
	for _, p := range listPackages(t) {
		r := rel(p.ImportPath)
		if p.Name != "main" && strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", r)
		}
		if strings.HasPrefix(r, "internal/") && !slices.Contains(internalAllowed, r) {
			t.Errorf("%s: internal/ holds only process plumbing and test tooling (%v)", r, internalAllowed)
		}
		stage, rank := stageOf(p.ImportPath)
		for _, imp := range p.Imports {
			switch {
			case strings.HasPrefix(imp, "github.com/nats-io/") && natsFree[r]:
				t.Errorf("%s imports %s: NATS implementations belong in a subpackage named after it", r, imp)
			case !strings.HasPrefix(imp, module):
				continue
			case r == "":
				t.Errorf("the domain core imports %s: it must import nothing of the module", rel(imp))
			case rel(imp) == "config" && !wiring(p.ImportPath):
				t.Errorf("%s imports config: only cmd and the service wiring compose the configuration", r)
			case strings.HasPrefix(rel(imp), "internal/") && rank >= 0:
				t.Errorf("%s (a stage) imports %s", r, rel(imp))
			}
			istage, irank := stageOf(imp)
			switch {
			case rank < 0 || irank < 0 || istage == stage:
			case stage == "ledger":
				t.Errorf("%s imports %s: the ledger is a leaf and imports no stage", r, rel(imp))
			case istage == "ledger":
			case irank > rank:
				t.Errorf("%s imports %s, which is downstream of it (flow: %s)", r, rel(imp), strings.Join(flow, " → "))
			}
			if rank >= 0 {
				for _, later := range []string{"pipeline", "replay", "service", "httpapi", "demo", "scenario", "config"} {
					if rel(imp) == later || strings.HasPrefix(rel(imp), later+"/") {
						t.Errorf("%s (a stage) imports %s", r, rel(imp))
					}
				}
			}
		}
	}
}
