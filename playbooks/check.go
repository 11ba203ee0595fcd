package playbooks

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// CheckedInput is the outcome of one example input in Check.
type CheckedInput struct {
	// Name is the input's name: data.inputs.NAME in tests, written as inputs/NAME/data.json.
	Name string `json:"name"`
	// File is the data file defining the input (several, comma-separated, when the
	// document is merged from more than one).
	File string `json:"file"`
	// Result is the engine's decision on it.
	Result Result `json:"result"`
	// Problems lists what is wrong: an escalation, a dropped action, a decision outside
	// the schema. Empty when the input checks out.
	Problems []string `json:"problems,omitempty"`
}

// CheckReport is the outcome of Check.
type CheckReport struct {
	// Revision is the revision of the checked playbooks.
	Revision string `json:"revision"`
	// Playbooks are the playbooks found.
	Playbooks []Playbook `json:"playbooks"`
	// Inputs are the example inputs, sorted by name.
	Inputs []CheckedInput `json:"inputs"`
}

// OK reports whether every input checked out.
func (r CheckReport) OK() bool {
	for _, in := range r.Inputs {
		if len(in.Problems) > 0 {
			return false
		}
	}
	return true
}

// Check compiles the sources in strict mode, tests included, checks the playbook
// conventions, and evaluates every example input (data.inputs.NAME, written as
// inputs/NAME/data.json) with the engine: each decision must come out without escalation,
// without dropped actions, and its merged form must pass the closed schema again. An
// input must also be written exactly as the engine passes it (UTC times, every field), so
// that the tests, which read the file as written like stock `opa test` does, see what the
// engine sees. Load and compile errors are a *CompileError; problems with inputs are in
// the report.
func Check(ctx context.Context, sources []Source, opts Options) (CheckReport, error) {
	lib, err := loadLibrary(sources, true)
	if err != nil {
		return CheckReport{}, err
	}
	if _, _, _, err := compileSet(lib, true, false); err != nil {
		return CheckReport{}, err
	}
	td, err := loadData(lib)
	if err != nil {
		return CheckReport{}, err
	}
	inputs, err := exampleInputs(td)
	if err != nil {
		return CheckReport{}, err
	}
	opts.Sources = sources
	e, err := New(ctx, opts)
	if err != nil {
		return CheckReport{}, err
	}
	rep := CheckReport{Revision: e.Revision(), Playbooks: e.Playbooks(), Inputs: []CheckedInput{}}
	names := slices.Sorted(maps.Keys(inputs))
	for _, n := range names {
		ex := inputs[n]
		res := e.Evaluate(ctx, ex.input)
		ci := CheckedInput{Name: n, File: ex.file, Result: res}
		drift, err := canonicalDrift(ex)
		switch {
		case err != nil:
			ci.Problems = append(ci.Problems, err.Error())
		case drift != "":
			ci.Problems = append(ci.Problems, "the tests read this input as written but the engine passes it in canonical form: "+drift+"; write it as the engine passes it")
		}
		if res.Escalated {
			ci.Problems = append(ci.Problems, fmt.Sprintf("escalated (%s): %s", res.Escalation, strings.Join(res.Errors, "; ")))
		}
		for _, d := range res.Dropped {
			ci.Problems = append(ci.Problems, fmt.Sprintf("%s proposed %s on %q, dropped: %s", d.Playbook, d.Action.Type, d.Action.Credential, d.Reason))
		}
		if err := revalidate(res.Decision, ex.input, e.maxTargets); err != nil {
			ci.Problems = append(ci.Problems, "merged decision outside the schema: "+err.Error())
		}
		rep.Inputs = append(rep.Inputs, ci)
	}
	return rep, nil
}

// revalidate passes a merged decision, stripped of the fields the engine sets, through
// the closed schema and the inventory checks once more.
func revalidate(d Decision, in Input, maxTargets int) error {
	plain := d
	plain.Actions = make([]Action, len(d.Actions))
	for i, a := range d.Actions {
		a.Mode, a.Playbooks = "", nil
		plain.Actions[i] = a
	}
	b, err := json.Marshal(plain)
	if err != nil {
		return err
	}
	parsed, err := ParseDecisionJSON(b, maxTargets)
	if err != nil {
		return err
	}
	kept, dropped, errs := checkTargets(Playbook{Name: "merged"}, parsed.Actions, in)
	switch {
	case len(errs) > 0:
		return errs[0]
	case len(dropped) > 0 || len(kept) != len(parsed.Actions):
		return fmt.Errorf("%w: %d action(s) would be dropped", ErrMalformed, len(dropped))
	}
	return nil
}
