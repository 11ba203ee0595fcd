// Package playbooks turns a detection into a decision by evaluating Rego playbooks on the
// embedded OPA engine.
//
// Playbooks are Rego packages with METADATA annotations (title, description and
// custom.mode) whose rule `decision`, annotated `entrypoint: true` and made total with a
// `default decision := ...` rule, maps the input document (Input) to a decision (the closed
// schema of Decision). The Engine loads modules from the shipped library (package rego) and
// from directories, compiles them once in strict mode, prepares one query once per
// compilation, and evaluates every detection against all playbooks at once. The actions of
// every matching playbook are merged deterministically and duplicates removed. A decision
// may carry a veto window ("veto_window": "90s", 1s to 1h): its destructive actions are
// announced and run when the window ends unless a human vetoes them (package actions);
// merged, the longest window any matching playbook asks for wins.
//
// The engine fails safe. A compile error at start is returned; on reload it keeps the
// previous playbooks serving and reports the error with file:line. An evaluation error, a
// builtin error (StrictBuiltinErrors is on), a timeout, an undefined decision or a decision
// outside the schema never yields a destructive action: it yields an escalation (a notify
// action and requires_approval) recorded in the Result. Every Result carries the playbook
// revision (a content hash), the input hash, the matched playbooks and the evaluation time.
//
// Test runs the _test.rego files through OPA's tester with coverage, and Check compiles a
// library and evaluates it over its example inputs: they back `killswitch playbook test`
// and `killswitch playbook check`. Both load the data files (.json, .yaml, .yml) the way
// stock `opa test` does, a document at the path of its directory, so a directory gives
// the same tests, outcomes and coverage in `opa test` and in `killswitch playbook test`;
// the example inputs are data.inputs.NAME, written as inputs/NAME/data.json.
package playbooks
