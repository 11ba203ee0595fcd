package playbooks_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/format"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/rego"
)

// shippedDir is the shipped library on disk, as an analyst passes it to `opa test`.
const shippedDir = "../rego"

// stockRun is what `opa test PATH ...` reports: each test's outcome by name, and the
// coverage of every module (tests included), by file.
type stockRun struct {
	results  map[string]bool // package path without "data." + "." + rule -> passed
	coverage cover.Report
}

// stockOPATest runs the tests of paths wired as the OPA CLI v1.22.3 wires `opa test
// --coverage PATH ...` (cmd/test.go: opaTest and compileAndSetupTests, no flags given):
// the tester's loader with annotations, the path-conflict check against the loaded data,
// print statements, type-check annotations, OPA's full capabilities, a 5 s timeout, no
// strict mode and no raised builtin errors.
func stockOPATest(ctx context.Context, paths ...string) (stockRun, error) {
	popts := ast.ParserOptions{RegoVersion: ast.DefaultRegoVersion, ProcessAnnotation: true}
	modules, store, err := tester.LoadWithParserOptions(paths, nil, popts)
	if err != nil {
		return stockRun{}, err
	}
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return stockRun{}, err
	}
	defer store.Abort(ctx, txn)
	schemas, err := loader.Schemas("")
	if err != nil {
		return stockRun{}, err
	}
	compiler := ast.NewCompiler().
		SetErrorLimit(ast.CompileErrorLimitDefault).
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(true).
		WithCapabilities(ast.CapabilitiesForThisVersion()).
		WithSchemas(schemas).
		WithUseTypeCheckAnnotations(true).
		WithRewriteTestRules(false)
	cov := cover.New()
	ch, err := tester.NewRunner().
		SetCompiler(compiler).
		SetStore(store).
		CapturePrintOutput(true).
		EnableTracing(false).
		StackTraces(true).
		SetCoverageRuns([]cover.Kind{cover.KindIndexExcluded, cover.KindEarlyExit}).
		SetCoverageQueryTracer(cov).
		SetModules(modules).
		SetTimeout(5*time.Second).
		SetParallel(runtime.NumCPU()).
		RunTests(ctx, txn)
	if err != nil {
		return stockRun{}, err
	}
	run := stockRun{results: map[string]bool{}}
	for r := range ch {
		run.results[strings.TrimPrefix(r.Package, "data.")+"."+r.Name] = r.Pass()
	}
	run.coverage = cov.Report(modules)
	return run, nil
}

// killswitchResults is the outcome of each test by name.
func killswitchResults(rep playbooks.TestReport) map[string]bool {
	out := map[string]bool{}
	for _, r := range rep.Results {
		out[r.Name] = r.Pass
	}
	return out
}

// sameRuns fails t unless stock OPA and Killswitch ran the same tests with the same
// outcomes and measured the same coverage of every policy file and overall.
func sameRuns(t *testing.T, stock stockRun, rep playbooks.TestReport) {
	t.Helper()
	ks := killswitchResults(rep)
	if !maps.Equal(stock.results, ks) {
		t.Errorf("opa test: %v\nkillswitch playbook test: %v", stock.results, ks)
	}
	// Stock OPA names the shipped files ../rego/...; Killswitch names them rego/....
	name := func(f string) string { return strings.TrimPrefix(f, "../") }
	var covered, notCovered int
	for file, fr := range stock.coverage.Files {
		if strings.HasSuffix(file, "_test.rego") {
			continue
		}
		covered += fr.CoveredLines
		notCovered += fr.NotCoveredLines
		i := slices.IndexFunc(rep.Coverage.Files, func(fc playbooks.FileCoverage) bool { return fc.File == name(file) })
		if i < 0 {
			t.Errorf("opa test covers %s, killswitch playbook test does not report it", file)
			continue
		}
		if fc := rep.Coverage.Files[i]; fc.Covered != fr.CoveredLines || fc.NotCovered != fr.NotCoveredLines {
			t.Errorf("%s: opa test covers %d of %d lines, killswitch playbook test %d of %d",
				file, fr.CoveredLines, fr.CoveredLines+fr.NotCoveredLines, fc.Covered, fc.Covered+fc.NotCovered)
		}
	}
	if covered != rep.Coverage.Covered || notCovered != rep.Coverage.NotCovered {
		t.Errorf("policy lines: opa test covers %d of %d, killswitch playbook test %d of %d",
			covered, covered+notCovered, rep.Coverage.Covered, rep.Coverage.Covered+rep.Coverage.NotCovered)
	}
	all := stock.coverage.CoveredLines + stock.coverage.NotCoveredLines
	if stock.coverage.Coverage != rep.Coverage.PercentWithTests || all != rep.Coverage.LinesWithTests {
		t.Errorf("coverage with the tests: opa test --coverage %.2f%% of %d lines, killswitch playbook test %.2f%% of %d",
			stock.coverage.Coverage, all, rep.Coverage.PercentWithTests, rep.Coverage.LinesWithTests)
	}
}

// TestStockOPATestPassesTheShippedLibrary: `opa test rego/` (the OPA CLI's own wiring)
// runs the same tests as `killswitch playbook test`, every one passes, and both measure
// the same coverage.
func TestStockOPATestPassesTheShippedLibrary(t *testing.T) {
	ctx := context.Background()
	stock, err := stockOPATest(ctx, shippedDir)
	if err != nil {
		t.Fatalf("opa test %s: %v", shippedDir, err)
	}
	for name, pass := range stock.results {
		if !pass {
			t.Errorf("opa test: %s fails", name)
		}
	}
	rep, err := playbooks.Test(ctx, []playbooks.Source{playbooks.Shipped()}, playbooks.TestOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Passed != len(stock.results) {
		t.Errorf("killswitch playbook test: %d passed, %d failed; opa test ran %d", rep.Passed, rep.Failed, len(stock.results))
	}
	sameRuns(t, stock, rep)
}

// unformatted returns why a Rego file is not what `opa fmt` would write, "" when it is.
func unformatted(name string, src []byte) string {
	want, err := format.SourceWithOpts(name, src, format.Opts{
		RegoVersion:   ast.DefaultRegoVersion,
		ParserOptions: &ast.ParserOptions{RegoVersion: ast.DefaultRegoVersion},
	})
	switch {
	case err != nil:
		return err.Error()
	case !bytes.Equal(want, src):
		return "opa fmt would rewrite it"
	}
	return ""
}

// checkStrict compiles modules as `opa check --strict` does.
func checkStrict(files map[string][]byte) error {
	mods := map[string]*ast.Module{}
	for name, src := range files {
		m, err := ast.ParseModuleWithOpts(name, string(src), ast.ParserOptions{RegoVersion: ast.DefaultRegoVersion, ProcessAnnotation: true})
		if err != nil {
			return err
		}
		mods[name] = m
	}
	c := ast.NewCompiler().
		SetErrorLimit(ast.CompileErrorLimitDefault).
		WithCapabilities(ast.CapabilitiesForThisVersion()).
		WithEnablePrintStatements(true).
		WithStrict(true).
		WithUseTypeCheckAnnotations(true)
	if c.Compile(mods); c.Failed() {
		return c.Errors
	}
	return nil
}

// TestShippedRegoIsFormattedAndStrict: every shipped .rego file is exactly what `opa fmt`
// writes, and the library passes `opa check --strict`; the two checks do catch a file
// that is not (so that they cannot pass by checking nothing).
func TestShippedRegoIsFormattedAndStrict(t *testing.T) {
	shipped := map[string][]byte{}
	err := fs.WalkDir(rego.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(p) != ".rego" {
			return err
		}
		shipped[p], err = fs.ReadFile(rego.FS(), p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(shipped) == 0 {
		t.Fatal("no shipped .rego file")
	}
	for _, name := range slices.Sorted(maps.Keys(shipped)) {
		t.Run(name, func(t *testing.T) {
			if why := unformatted(name, shipped[name]); why != "" {
				t.Error(why)
			}
		})
	}
	if err := checkStrict(shipped); err != nil {
		t.Errorf("opa check --strict: %v", err)
	}

	if unformatted("x.rego", []byte("package x\nallow if { 1 == 1 }\n")) == "" {
		t.Error("an unformatted module passes the format check")
	}
	var errs ast.Errors
	if err := checkStrict(map[string][]byte{"x.rego": []byte("package x\n\nimport data.y\n\nallow if {\n\tz := 1\n\ttrue\n}\n")}); !errors.As(err, &errs) || len(errs) != 2 {
		t.Errorf("strict check of an unused import and variable: %v", err)
	}
}

// TestOPATestDirectoriesRunTheSameInKillswitch: directories written for `opa test` (rego
// tests plus data files) give the same tests, outcomes and coverage in `killswitch
// playbook test`, with the shipped library or without it; what stock OPA refuses to load,
// Killswitch refuses too.
func TestOPATestDirectoriesRunTheSameInKillswitch(t *testing.T) {
	spike := mustJSON(t, shippedInput(t, "exfil_critical"))
	// No input reaches the second rule (the shipped tests evaluate every playbook too):
	// coverage must agree on lines not covered as well.
	playbook := playbookModule("p", "shadow", `decision := {"actions": [lib.notify(sprintf("%s over %d", [lib.subject, data.fixtures.limits.max]))], "reason": "r"} if {
	input.detection.detector == "spike"
}

decision := {"actions": [lib.notify("unreached")], "reason": "unreached"} if {
	input.detection.vendor == "a vendor no input names"
}`)
	playbook = strings.Replace(playbook, "package killswitch.playbooks.p\n", "package killswitch.playbooks.p\n\nimport data.killswitch.lib\n", 1)
	tests := `package killswitch.playbooks.p_test

import data.killswitch.playbooks.p

test_notifies_on_a_spike if {
	d := p.decision with input as data.inputs.spike
	d.actions[0].message == "mailer/mailer-api over 3"
}

test_reads_yaml if {
	d := p.decision with input as data.inputs.small
	d.actions[0].message == "v over 3"
}

test_a_top_level_fixture if {
	data.owner == "secops"
}

test_fails_on_purpose if {
	d := p.decision with input as data.inputs.spike
	count(d.actions) == 2
}
`
	small := "detection:\n  detector: spike\n  vendor: v\n  severity: low\nvendor:\n  name: v\n"
	for _, tc := range []struct {
		name    string
		files   map[string]string
		shipped bool
		// refused: stock OPA does not load the directory, and Killswitch refuses it too.
		refused bool
	}{
		{name: "with the shipped library", shipped: true, files: map[string]string{
			"p.rego": playbook, "p_test.rego": tests,
			"inputs/spike/data.json":     spike,
			"inputs/small/data.yaml":     small,
			"fixtures/limits/data.yml":   "max: 3\n",
			"data.json":                  `{"owner": "secops"}`,
			"notes/README.md":            "not data",
			"fixtures/limits/readme.txt": "not data",
		}},
		{name: "on its own", files: map[string]string{
			"lib.rego": `package killswitch.lib

notify(message) := {"type": "notify", "message": message}

subject := input.detection.vendor if not input.detection.credential

subject := sprintf("%s/%s", [input.detection.vendor, input.detection.credential]) if input.detection.credential
`,
			"p.rego": playbook, "p_test.rego": tests,
			"inputs/spike/data.json":   spike,
			"inputs/small/data.yaml":   small,
			"fixtures/limits/data.yml": "max: 3\n",
			"data.json":                `{"owner": "secops"}`,
		}},
		{name: "two data files for one document", shipped: true, refused: true, files: map[string]string{
			"p.rego": playbook, "p_test.rego": tests,
			"inputs/spike/data.json": spike,
			"inputs/spike/more.json": strings.Replace(spike, `"critical"`, `"low"`, 1),
		}},
		{name: "a rule where a data file put a document", shipped: true, refused: true, files: map[string]string{
			"p.rego": playbook, "p_test.rego": tests,
			"killswitch/playbooks/p/data.json": `{"decision": {"actions": []}}`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			writeFiles(t, dir, tc.files)
			paths := []string{dir}
			sources := []playbooks.Source{playbooks.DirSource(dir)}
			if tc.shipped {
				paths = []string{shippedDir, dir}
				sources = []playbooks.Source{playbooks.Shipped(), playbooks.DirSource(dir)}
			}
			stock, stockErr := stockOPATest(ctx, paths...)
			rep, err := playbooks.Test(ctx, sources, playbooks.TestOptions{Timeout: time.Minute})
			if tc.refused {
				if stockErr == nil || !errors.Is(err, playbooks.ErrCompile) {
					t.Fatalf("opa test: %v; killswitch playbook test: %v; want both to refuse", stockErr, err)
				}
				return
			}
			if stockErr != nil || err != nil {
				t.Fatalf("opa test: %v; killswitch playbook test: %v", stockErr, err)
			}
			if rep.Coverage.NotCovered == 0 {
				t.Error("every line is covered: the comparison does not exercise lines not covered")
			}
			if rep.Failed != 1 || !slices.ContainsFunc(rep.Results, func(r playbooks.TestResult) bool {
				return strings.HasSuffix(r.Name, ".test_fails_on_purpose") && !r.Pass
			}) {
				t.Errorf("killswitch playbook test: %d passed, %d failed, want only test_fails_on_purpose to fail", rep.Passed, rep.Failed)
			}
			sameRuns(t, stock, rep)
		})
	}
}
