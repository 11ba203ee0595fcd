package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/spf13/cobra"
)

// newPlaybookCmd is `killswitch playbook {test,eval,check,export}`.
func newPlaybookCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "playbook",
		Short: "test, evaluate and check the Rego playbooks; export the shipped library",
		Long: longHelp(`Without DIR the shipped library is used; with DIRs only those, plus the shipped library
when --shipped is given. export writes the shipped library (playbooks, tests and example
inputs) to DIR for stock OPA tools: opa test DIR MY-DIR, opa fmt, opa check --strict.`,
			playbookExitCodes),
	}
	c.AddCommand(newPlaybookTestCmd(), newPlaybookEvalCmd(), newPlaybookCheckCmd(), newPlaybookExportCmd())
	return c
}

const playbookExitCodes = `Exit status: 0 ok; 1 a test failed, the playbooks do not compile, a check failed or the
decision escalated; 2 bad usage or input.`

// playbookSources turns DIR arguments into sources.
func playbookSources(dirs []string, shipped bool) ([]playbooks.Source, error) {
	var srcs []playbooks.Source
	if len(dirs) == 0 || shipped {
		srcs = append(srcs, playbooks.Shipped())
	}
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%s is not a directory", d)
		}
		srcs = append(srcs, playbooks.DirSource(d))
	}
	return srcs, nil
}

func printCompileError(w io.Writer, cmd string, err error) {
	var ce *playbooks.CompileError
	if errors.As(err, &ce) {
		fmt.Fprintf(w, "killswitch %s: playbooks do not compile:\n", cmd)
		for _, p := range ce.Problems {
			fmt.Fprintln(w, "  "+p.String())
		}
		return
	}
	fmt.Fprintf(w, "killswitch %s: %v\n", cmd, err)
}

// playbookTestOptions are the flags of `killswitch playbook test`.
type playbookTestOptions struct {
	shipped, asJSON bool
	run             string
	minCov          float64
	timeout         time.Duration
}

func newPlaybookTestCmd() *cobra.Command {
	var o playbookTestOptions
	c := &cobra.Command{
		Use:   "test [DIR…] [flags]",
		Short: "run the playbooks' _test.rego files (OPA's tester, with coverage)",
		Long: longHelp(`Runs the _test.rego files of DIRs (default: the shipped library) with OPA's tester and
reports the coverage of the playbooks.`, playbookExitCodes),
		RunE: exits(func(ctx context.Context, c *cobra.Command, dirs []string) int {
			return playbookTest(ctx, &o, dirs, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.BoolVar(&o.shipped, "shipped", false, "also load the shipped library when DIRs are given")
	fs.StringVar(&o.run, "run", "", "run only the tests whose name matches this regular expression")
	fs.Float64Var(&o.minCov, "min-coverage", 0, "fail when the coverage of the playbooks is below this percentage")
	fs.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	fs.DurationVar(&o.timeout, "test-timeout", 5*time.Second, "deadline of each test")
	deprecatedAlias(fs, "timeout", "test-timeout")
	return c
}

func playbookTest(ctx context.Context, o *playbookTestOptions, dirs []string, stdout, stderr io.Writer) int {
	shipped, run, minCov, asJSON, timeout := &o.shipped, &o.run, &o.minCov, &o.asJSON, &o.timeout
	srcs, err := playbookSources(dirs, *shipped)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch playbook test:", err)
		return 2
	}
	rep, err := playbooks.Test(ctx, srcs, playbooks.TestOptions{Run: *run, Timeout: *timeout})
	if err != nil {
		printCompileError(stderr, "playbook test", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "killswitch playbook test:", err)
			return 1
		}
	} else {
		for _, r := range rep.Results {
			status := "PASS"
			switch {
			case r.Skip:
				status = "SKIP"
			case !r.Pass:
				status = "FAIL"
			}
			fmt.Fprintf(stdout, "%s  %s  (%s:%d, %s)\n", status, r.Name, r.File, r.Line, r.Duration.Round(time.Microsecond))
			if !r.Pass && !r.Skip {
				if r.Error != "" {
					fmt.Fprintf(stdout, "      error: %s\n", r.Error)
				}
				if r.Output != "" {
					fmt.Fprintf(stdout, "      output: %s\n", strings.ReplaceAll(strings.TrimSpace(r.Output), "\n", "\n              "))
				}
			}
		}
		fmt.Fprintf(stdout, "\n%d passed, %d failed, %d skipped\n", rep.Passed, rep.Failed, rep.Skipped)
		c := rep.Coverage
		fmt.Fprintf(stdout, "coverage: %.1f%% of %d policy lines (_test.rego files excluded)\n", c.Percent, c.Covered+c.NotCovered)
		fmt.Fprintf(stdout, "coverage with the _test.rego files (what opa test --coverage reports): %.1f%% of %d lines\n", c.PercentWithTests, c.LinesWithTests)
		for _, f := range c.Files {
			fmt.Fprintf(stdout, "  %6.1f%%  %s", f.Percent, f.File)
			if len(f.NotCoveredLines) > 0 {
				fmt.Fprintf(stdout, "  not covered: %s", lineRanges(f.NotCoveredLines))
			}
			fmt.Fprintln(stdout)
		}
	}
	switch {
	case !rep.OK():
		if rep.Passed+rep.Failed == 0 {
			fmt.Fprintln(stderr, "killswitch playbook test: no test ran")
		}
		return 1
	case rep.Coverage.Percent < *minCov:
		fmt.Fprintf(stderr, "killswitch playbook test: coverage %.1f%% is below --min-coverage %.1f%%\n", rep.Coverage.Percent, *minCov)
		return 1
	}
	return 0
}

// lineRanges renders sorted line numbers as "3, 7-9".
func lineRanges(lines []int) string {
	var parts []string
	for i := 0; i < len(lines); {
		j := i
		for j+1 < len(lines) && lines[j+1] == lines[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(lines[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", lines[i], lines[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// playbookEvalOptions are the flags of `killswitch playbook eval`.
type playbookEvalOptions struct {
	inputPath, configPath string
	trace, shipped        bool
	timeout, window       time.Duration
	remaining, limit      int
}

func newPlaybookEvalCmd() *cobra.Command {
	var o playbookEvalOptions
	c := &cobra.Command{
		Use:   "eval --input FILE [DIR…] [flags]",
		Short: "evaluate the playbooks on one input and print the decision",
		Long: longHelp(`Evaluates the playbooks of DIRs (default: the shipped library) on an input document, or on a
bare detection completed from the configuration's vendor inventory, and prints the result
(the decision, the playbooks that matched, an escalation) as JSON.`, playbookExitCodes),
		RunE: exits(func(ctx context.Context, c *cobra.Command, dirs []string) int {
			return playbookEval(ctx, &o, dirs, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.StringVar(&o.inputPath, "input", "", "input document, or a bare detection, as JSON (- for stdin)")
	fs.StringVar(&o.configPath, "config", "", "configuration file whose vendor inventory completes a bare detection")
	fs.BoolVar(&o.trace, "trace", false, "write OPA's evaluation trace to stderr")
	fs.BoolVar(&o.shipped, "shipped", false, "also load the shipped library when DIRs are given")
	fs.DurationVar(&o.timeout, "eval-timeout", playbooks.DefaultTimeout, "evaluation deadline (the service's default; past it a decision escalates)")
	deprecatedAlias(fs, "timeout", "eval-timeout")
	fs.IntVar(&o.remaining, "budget-remaining", 10, "revocation budget left, for a bare detection")
	fs.IntVar(&o.limit, "budget-limit", 10, "revocation budget per window, for a bare detection")
	fs.DurationVar(&o.window, "budget-window", time.Hour, "revocation budget window, for a bare detection")
	return c
}

func playbookEval(ctx context.Context, o *playbookEvalOptions, dirs []string, stdout, stderr io.Writer) int {
	var err error
	inputPath, configPath, trace, shipped, timeout := &o.inputPath, &o.configPath, &o.trace, &o.shipped, &o.timeout
	remaining, limit, window := &o.remaining, &o.limit, &o.window
	if *inputPath == "" {
		fmt.Fprintln(stderr, "killswitch playbook eval: --input is required")
		return 2
	}
	var raw []byte
	if *inputPath == "-" {
		raw, err = io.ReadAll(io.LimitReader(os.Stdin, playbooks.MaxInputBytes+1))
	} else {
		raw, err = os.ReadFile(*inputPath)
	}
	if err != nil {
		fmt.Fprintln(stderr, "killswitch playbook eval:", err)
		return 2
	}
	in, err := readEvalInput(raw, *configPath, playbooks.Budget{
		Remaining: *remaining, Limit: *limit, Window: window.String(),
	})
	if err != nil {
		fmt.Fprintf(stderr, "killswitch playbook eval: %s: %v\n", *inputPath, err)
		return 2
	}
	srcs, err := playbookSources(dirs, *shipped)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch playbook eval:", err)
		return 2
	}
	e, err := playbooks.New(ctx, playbooks.Options{Sources: srcs, Timeout: *timeout})
	if err != nil {
		printCompileError(stderr, "playbook eval", err)
		return 1
	}
	var opts []playbooks.EvalOption
	if *trace {
		opts = append(opts, playbooks.WithTrace(stderr))
	}
	res := e.Evaluate(ctx, in, opts...)
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		fmt.Fprintln(stderr, "killswitch playbook eval:", err)
		return 1
	}
	if res.Escalated {
		fmt.Fprintf(stderr, "killswitch playbook eval: escalated (%s)\n", res.Escalation)
		return 1
	}
	return 0
}

// readEvalInput reads a full input document or, when the JSON has no "detection" key, a
// bare detection completed from the configuration's vendor inventory.
func readEvalInput(raw []byte, configPath string, budget playbooks.Budget) (playbooks.Input, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return playbooks.Input{}, fmt.Errorf("%w: %w", playbooks.ErrInvalidInput, err)
	}
	if _, full := probe["detection"]; full {
		if configPath != "" {
			return playbooks.Input{}, errors.New("--config completes a bare detection; this is a full input document")
		}
		return playbooks.DecodeInput(bytes.NewReader(raw))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var d detectors.Detection
	if err := dec.Decode(&d); err != nil {
		return playbooks.Input{}, fmt.Errorf("%w: a bare detection: %w", playbooks.ErrInvalidInput, err)
	}
	view := playbooks.NewVendorView(d.Vendor, nil)
	if configPath != "" {
		cfg, err := config.Load(configPath)
		if err != nil {
			return playbooks.Input{}, err
		}
		if v, ok := cfg.Vendors[d.Vendor]; ok {
			view = playbooks.NewVendorView(d.Vendor, &v)
		}
	}
	in := playbooks.NewInput(d, view, budget)
	if err := in.Validate(); err != nil {
		return playbooks.Input{}, err
	}
	return in, nil
}

// playbookCheckOptions are the flags of `killswitch playbook check`.
type playbookCheckOptions struct {
	shipped, asJSON bool
	timeout         time.Duration
}

func newPlaybookCheckCmd() *cobra.Command {
	var o playbookCheckOptions
	c := &cobra.Command{
		Use:   "check [DIR…] [flags]",
		Short: "compile the playbooks strictly and check the decisions on the example inputs",
		Long: longHelp(`Compiles the playbooks of DIRs (default: the shipped library) as the service does (strict),
lists them with their modes, and evaluates every example input (inputs/NAME/data.json),
checking the decision against its expectations.`, playbookExitCodes),
		RunE: exits(func(ctx context.Context, c *cobra.Command, dirs []string) int {
			return playbookCheck(ctx, &o, dirs, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.BoolVar(&o.shipped, "shipped", false, "also load the shipped library when DIRs are given")
	fs.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	fs.DurationVar(&o.timeout, "eval-timeout", playbooks.DefaultTimeout, "evaluation deadline (the service's default; past it a decision escalates)")
	deprecatedAlias(fs, "timeout", "eval-timeout")
	return c
}

func playbookCheck(ctx context.Context, o *playbookCheckOptions, dirs []string, stdout, stderr io.Writer) int {
	shipped, asJSON, timeout := &o.shipped, &o.asJSON, &o.timeout
	srcs, err := playbookSources(dirs, *shipped)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch playbook check:", err)
		return 2
	}
	rep, err := playbooks.Check(ctx, srcs, playbooks.Options{Timeout: *timeout})
	if err != nil {
		printCompileError(stderr, "playbook check", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "killswitch playbook check:", err)
			return 1
		}
	} else {
		fmt.Fprintf(stdout, "compiled (strict): revision %s\n\nplaybooks:\n", rep.Revision)
		for _, p := range rep.Playbooks {
			fmt.Fprintf(stdout, "  %-8s %s  %q  (%s:%d)\n", p.Mode, p.Name, p.Title, p.File, p.Line)
		}
		fmt.Fprintln(stdout, "\ninputs:")
		if len(rep.Inputs) == 0 {
			fmt.Fprintln(stdout, "  none (put example input documents in inputs/NAME/data.json to check decisions)")
		}
		for _, in := range rep.Inputs {
			status := "ok  "
			if len(in.Problems) > 0 {
				status = "FAIL"
			}
			d := in.Result.Decision
			fmt.Fprintf(stdout, "  %s  %-30s actions %d, approval %v, severity %s, matched %s\n",
				status, in.Name, len(d.Actions), d.RequiresApproval, d.Severity, strings.Join(in.Result.Matched, " "))
			for _, p := range in.Problems {
				fmt.Fprintf(stdout, "        %s\n", p)
			}
		}
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

// playbookExport writes the shipped library to a directory, never over an existing file,
// so that stock OPA tools can load it next to the analyst's own playbooks.
func newPlaybookExportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "export DIR",
		Short: "write the shipped library to a new directory, for stock OPA tools",
		Long: longHelp(`Writes the shipped library (playbooks, tests and example inputs) to DIR, never over an
existing file, for stock OPA tools: opa test DIR MY-DIR, opa fmt, opa check --strict.`, playbookExitCodes),
		RunE: exits(func(_ context.Context, c *cobra.Command, dirs []string) int {
			return playbookExport(dirs, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
}

func playbookExport(dirs []string, stdout, stderr io.Writer) int {
	if len(dirs) != 1 {
		fmt.Fprintln(stderr, "killswitch playbook export: give one directory to write the shipped library to")
		return 2
	}
	if err := os.CopyFS(dirs[0], playbooks.Shipped().FS); err != nil {
		fmt.Fprintf(stderr, "killswitch playbook export: %v (existing files are never overwritten: export to a new or empty directory)\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote the shipped library to %s; stock OPA runs its tests with: opa test %s\n", dirs[0], dirs[0])
	return 0
}
