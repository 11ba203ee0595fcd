package playbooks

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestOptions configure Test. Zero values mean the documented defaults.
type TestOptions struct {
	// Run, when set, is a regular expression selecting the tests to run by name.
	Run string
	// Timeout bounds each test. Default 5s.
	Timeout time.Duration
	// Parallel is how many tests run at once. Default: the number of CPUs.
	Parallel int
}

// TestResult is the outcome of one Rego test.
type TestResult struct {
	// Name is the test's package path and rule name, e.g.
	// killswitch.playbooks.exfiltration_test.test_revokes.
	Name string `json:"name"`
	// File and Line locate the test.
	File string `json:"file"`
	Line int    `json:"line"`
	// Pass reports success; Skip a test named todo_*.
	Pass bool `json:"pass"`
	Skip bool `json:"skip,omitempty"`
	// Error is the evaluation error, if any (a failed test without error evaluated to
	// false or undefined).
	Error string `json:"error,omitempty"`
	// Output is what the test printed with print().
	Output string `json:"output,omitempty"`
	// Duration is how long the test took.
	Duration time.Duration `json:"duration_ns"`
}

// FileCoverage is the coverage of one policy file.
type FileCoverage struct {
	// File is the file name.
	File string `json:"file"`
	// Percent is the covered share of its evaluable lines, 0–100.
	Percent float64 `json:"percent"`
	// Covered and NotCovered count lines.
	Covered    int `json:"covered_lines"`
	NotCovered int `json:"not_covered_lines"`
	// NotCoveredLines lists the lines never evaluated.
	NotCoveredLines []int `json:"not_covered"`
}

// Coverage is the coverage of the policy files by the tests; the _test.rego files
// themselves are left out so that they do not inflate the number.
type Coverage struct {
	// Percent is the covered share of all evaluable policy lines, 0–100.
	Percent float64 `json:"percent"`
	// Covered and NotCovered count lines over every policy file.
	Covered    int `json:"covered_lines"`
	NotCovered int `json:"not_covered_lines"`
	// Files is the coverage per policy file, sorted by name.
	Files []FileCoverage `json:"files"`
	// PercentWithTests and LinesWithTests are the coverage counting the _test.rego files
	// too: the figure stock `opa test --coverage` reports for the same directories.
	PercentWithTests float64 `json:"percent_with_tests"`
	LinesWithTests   int     `json:"lines_with_tests"`
}

// TestReport is the outcome of a test run.
type TestReport struct {
	// Results are sorted by file and line.
	Results []TestResult `json:"results"`
	// Passed, Failed and Skipped count the results.
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
	// Coverage is the coverage of the policy files.
	Coverage Coverage `json:"coverage"`
}

// OK reports whether at least one test ran and none failed.
func (r TestReport) OK() bool { return r.Failed == 0 && r.Passed > 0 }

// Test runs the _test.rego files of the sources through OPA's tester, with coverage, on
// the data the way stock `opa test DIR ...` loads it: every .json, .yaml and .yml file is
// a document at the path of its directory (loadData), so the same directory gives the
// same tests and results in both. The example inputs (data.inputs.NAME, written as
// inputs/NAME/data.json) must be valid input documents (DecodeInput). The modules are
// compiled like the engine compiles them (strict, deterministic builtins, builtin errors
// raised) plus print(). A source that does not load or compile gives a *CompileError.
func Test(ctx context.Context, sources []Source, opts TestOptions) (TestReport, error) {
	lib, err := loadLibrary(sources, true)
	if err != nil {
		return TestReport{}, err
	}
	// The playbook conventions are checked on the policy modules alone.
	if _, _, _, err := compileSet(lib, false, false); err != nil {
		return TestReport{}, err
	}
	td, err := loadData(lib)
	if err != nil {
		return TestReport{}, err
	}
	if _, err := exampleInputs(td); err != nil {
		return TestReport{}, err
	}
	files := append(append([]file(nil), lib.modules...), lib.tests...)
	mods, problems := parseFiles(files)
	if len(problems) > 0 {
		return TestReport{}, newCompileError(problems)
	}
	store := inmem.NewFromObject(td.docs)
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return TestReport{}, fmt.Errorf("playbook tests: %w", err)
	}
	defer store.Abort(ctx, txn)
	cov := cover.New()
	runner := tester.NewRunner().
		// Like `opa test`: a rule may not be defined where a data file put a document.
		SetCompiler(newCompiler(true).WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn))).
		SetStore(store).
		SetModules(mods).
		RaiseBuiltinErrors(true).
		CapturePrintOutput(true).
		SetCoverageQueryTracer(cov).
		Filter(opts.Run)
	if opts.Timeout > 0 {
		runner = runner.SetTimeout(opts.Timeout)
	}
	if opts.Parallel > 0 {
		runner = runner.SetParallel(opts.Parallel)
	}
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return TestReport{}, newCompileError(fromASTErrors(err))
	}
	var rep TestReport
	for r := range ch {
		tr := TestResult{
			Name: strings.TrimPrefix(r.Package, "data.") + "." + r.Name, Pass: r.Pass(), Skip: r.Skip,
			Output: string(r.Output), Duration: r.Duration,
		}
		if r.Location != nil {
			tr.File, tr.Line = r.Location.File, r.Location.Row
		}
		if r.Error != nil {
			tr.Error = r.Error.Error()
		}
		switch {
		case r.Skip:
			rep.Skipped++
		case tr.Pass:
			rep.Passed++
		default:
			rep.Failed++
		}
		rep.Results = append(rep.Results, tr)
	}
	if err := ctx.Err(); err != nil {
		return TestReport{}, fmt.Errorf("playbook tests: %w", err)
	}
	sort.Slice(rep.Results, func(i, j int) bool {
		a, b := rep.Results[i], rep.Results[j]
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
	policy := map[string]*ast.Module{}
	for _, f := range lib.modules {
		policy[f.name] = mods[f.name]
	}
	rep.Coverage = coverageOf(cov.Report(policy), policy)
	// What `opa test --coverage` prints: every module, the tests included.
	all := cov.Report(mods)
	rep.Coverage.PercentWithTests = all.Coverage
	rep.Coverage.LinesWithTests = all.CoveredLines + all.NotCoveredLines
	return rep, nil
}

// coverageOf summarises a coverage report over the policy files only.
func coverageOf(r cover.Report, policy map[string]*ast.Module) Coverage {
	var c Coverage
	for name := range policy {
		fr := r.Files[name]
		fc := FileCoverage{File: name, NotCoveredLines: []int{}}
		if fr != nil {
			fc.Covered, fc.NotCovered = fr.CoveredLines, fr.NotCoveredLines
			seen := map[int]bool{}
			for _, rng := range fr.NotCovered {
				for row := rng.Start.Row; row <= rng.End.Row; row++ {
					if !seen[row] {
						seen[row] = true
						fc.NotCoveredLines = append(fc.NotCoveredLines, row)
					}
				}
			}
			sort.Ints(fc.NotCoveredLines)
		}
		if total := fc.Covered + fc.NotCovered; total > 0 {
			fc.Percent = 100 * float64(fc.Covered) / float64(total)
		}
		c.Covered += fc.Covered
		c.NotCovered += fc.NotCovered
		c.Files = append(c.Files, fc)
	}
	sort.Slice(c.Files, func(i, j int) bool { return c.Files[i].File < c.Files[j].File })
	if total := c.Covered + c.NotCovered; total > 0 {
		c.Percent = 100 * float64(c.Covered) / float64(total)
	}
	return c
}
