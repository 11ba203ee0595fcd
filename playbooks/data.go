package playbooks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
)

// inputsRoot is the top-level data document whose members are the example inputs:
// data.inputs.NAME, written as inputs/NAME/data.json.
const inputsRoot = "inputs"

// isDataFile reports whether OPA's loader reads the file as a data document.
func isDataFile(p string) bool {
	switch path.Ext(p) {
	case ".json", ".yaml", ".yml":
		return true
	}
	return false
}

// placedFile is a data file and its document wrapped to the root of data.
type placedFile struct {
	file file
	doc  map[string]any
}

// testData is the data documents of a library, laid out the way stock `opa test DIR ...`
// lays them out.
type testData struct {
	docs   map[string]any
	placed []placedFile
}

// loadData parses the data files of a library and places them as OPA's file loader does
// for `opa test DIR ...`: a file's document goes to the path of its directory inside its
// source (inputs/exfil/data.json is data.inputs.exfil; a file at the top of a source must
// hold an object, merged into data), and two files giving different values to one path
// are an error. Sources are merged into one data tree, as OPA merges its path arguments.
//
// An example input written the old way, directly under inputs/ (inputs/NAME.json, a
// document with a "detection"), is refused with the move that fixes it: OPA would load it
// as data.inputs itself, and two of them collide.
func loadData(lib *library) (*testData, error) {
	td := &testData{docs: map[string]any{}}
	var problems []Problem
	for _, f := range lib.data {
		var doc any
		var err error
		if path.Ext(f.rel) == ".json" {
			err = util.UnmarshalJSON(f.src, &doc)
		} else {
			err = util.Unmarshal(f.src, &doc)
		}
		if err != nil {
			problems = append(problems, Problem{File: f.name, Message: "not a valid data file: " + err.Error()})
			continue
		}
		dir := path.Dir(f.rel)
		var at []string
		if dir != "." {
			at = strings.Split(dir, "/")
		}
		if obj, ok := doc.(map[string]any); ok && path.Base(dir) == inputsRoot {
			if _, isInput := obj["detection"]; isInput {
				name := strings.TrimSuffix(path.Base(f.rel), path.Ext(f.rel))
				problems = append(problems, Problem{File: f.name, Message: fmt.Sprintf(
					"an example input directly in inputs/ is the old layout: `opa test` puts a data file at its directory's path, so it would be "+
						"data.inputs itself and two such files collide; move it to inputs/%s/data.json, at the top of the playbook directory, "+
						"to keep it data.inputs.%s in both `opa test` and `killswitch playbook test`", name, name)})
				continue
			}
		}
		wrapped, ok := wrapDoc(at, doc)
		if !ok {
			problems = append(problems, Problem{File: f.name, Message: "a data file at the top of a playbook directory must hold an object: OPA merges it into data"})
			continue
		}
		if conflict, clash := conflictAt(td.docs, wrapped); clash {
			other := "another data file"
			for _, p := range td.placed {
				if _, c := conflictAt(p.doc, wrapped); c {
					other = p.file.name
					break
				}
			}
			problems = append(problems, Problem{File: f.name, Message: fmt.Sprintf(
				"conflicting values at %s, also defined in %s (OPA's loader refuses it the same way)", dataRef(conflict), other)})
			continue
		}
		td.placed = append(td.placed, placedFile{file: f, doc: wrapped})
		mergeInto(td.docs, deepCopy(wrapped).(map[string]any))
	}
	if len(problems) > 0 {
		return nil, newCompileError(problems)
	}
	return td, nil
}

// wrapDoc nests doc under the keys of at; at the root it must be an object.
func wrapDoc(at []string, doc any) (map[string]any, bool) {
	if len(at) == 0 {
		obj, ok := doc.(map[string]any)
		return obj, ok
	}
	for i := len(at) - 1; i >= 0; i-- {
		doc = map[string]any{at[i]: doc}
	}
	return doc.(map[string]any), true
}

// conflictAt returns the first path (in key order) where merging b into a would replace
// a value, as OPA's merge does: two objects merge, anything else at the same key clashes.
func conflictAt(a, b map[string]any) ([]string, bool) {
	for _, k := range util.KeysSorted(b) {
		old, ok := a[k]
		if !ok {
			continue
		}
		oldObj, ok1 := old.(map[string]any)
		newObj, ok2 := b[k].(map[string]any)
		if !ok1 || !ok2 {
			return []string{k}, true
		}
		if p, clash := conflictAt(oldObj, newObj); clash {
			return append([]string{k}, p...), true
		}
	}
	return nil, false
}

// mergeInto merges b into a; conflictAt(a, b) must have found nothing.
func mergeInto(a, b map[string]any) {
	for k, v := range b {
		old, ok := a[k]
		if !ok {
			a[k] = v
			continue
		}
		mergeInto(old.(map[string]any), v.(map[string]any))
	}
}

// deepCopy copies the objects and arrays of a decoded document.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(x))
		for k, e := range x {
			c[k] = deepCopy(e)
		}
		return c
	case []any:
		c := make([]any, len(x))
		for i, e := range x {
			c[i] = deepCopy(e)
		}
		return c
	}
	return v
}

// dataRef renders a data path the way OPA prints references: data.inputs.x["a-b"].
func dataRef(p []string) string {
	ref := ast.Ref{ast.DefaultRootDocument}
	for _, k := range p {
		ref = append(ref, ast.StringTerm(k))
	}
	return ref.String()
}

// filesDefining lists the data files that put something at the data path p.
func (td *testData) filesDefining(p ...string) []string {
	var out []string
	for _, pf := range td.placed {
		var cur any = pf.doc
		found := true
		for _, k := range p {
			obj, ok := cur.(map[string]any)
			if !ok {
				found = false
				break
			}
			if cur, ok = obj[k]; !ok {
				found = false
				break
			}
		}
		if found {
			out = append(out, pf.file.name)
		}
	}
	return out
}

// exampleInput is one example input: data.inputs.NAME.
type exampleInput struct {
	file  string // the data file(s) defining it
	input Input
	doc   any // the document as the tests see it: as written
}

// exampleInputs decodes every member of data.inputs strictly as an input document:
// data.inputs holds the example inputs, that `killswitch playbook check` evaluates with
// the engine and the tests read.
func exampleInputs(td *testData) (map[string]exampleInput, error) {
	out := map[string]exampleInput{}
	raw, ok := td.docs[inputsRoot]
	if !ok {
		return out, nil
	}
	obj, ok := raw.(map[string]any)
	if !ok {
		return nil, newCompileError([]Problem{{
			File:    strings.Join(td.filesDefining(inputsRoot), ", "),
			Message: "data.inputs must be an object whose members are example input documents (inputs/NAME/data.json is data.inputs.NAME)",
		}})
	}
	var problems []Problem
	for _, name := range util.KeysSorted(obj) {
		files := strings.Join(td.filesDefining(inputsRoot, name), ", ")
		b, err := json.Marshal(obj[name])
		if err == nil {
			var in Input
			if in, err = DecodeInput(bytes.NewReader(b)); err == nil {
				out[name] = exampleInput{file: files, input: in, doc: obj[name]}
				continue
			}
		}
		problems = append(problems, Problem{File: files, Message: fmt.Sprintf("%s: %v", dataRef([]string{inputsRoot, name}), err)})
	}
	if len(problems) > 0 {
		return nil, newCompileError(problems)
	}
	return out, nil
}

// canonicalDrift compares an example input as written with the canonical document the
// engine passes for it, and describes the first difference ("" when none): the tests see
// the file as written, the engine sees the canonical form.
func canonicalDrift(ex exampleInput) (string, error) {
	canon, _, err := ex.input.encode()
	if err != nil {
		return "", err
	}
	var want any
	if err := util.UnmarshalJSON(canon, &want); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	return firstDifference("", ex.doc, want), nil
}

// firstDifference describes the first place (a JSON pointer) where got and want differ,
// numbers compared by value; "" when they are equal.
func firstDifference(at string, got, want any) string {
	show := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(b)
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		keys := util.KeysSorted(w)
		for _, k := range util.KeysSorted(g) {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := at + "/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(k)
			gv, gok := g[k]
			wv, wok := w[k]
			switch {
			case !gok:
				return fmt.Sprintf("%s is absent, the engine passes %s", p, show(wv))
			case !wok:
				return fmt.Sprintf("%s is %s, the engine leaves it out", p, show(gv))
			}
			if d := firstDifference(p, gv, wv); d != "" {
				return d
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			break
		}
		for i := range w {
			if d := firstDifference(at+"/"+strconv.Itoa(i), g[i], w[i]); d != "" {
				return d
			}
		}
		return ""
	default:
		gv, err1 := ast.InterfaceToValue(got)
		wv, err2 := ast.InterfaceToValue(want)
		if err1 == nil && err2 == nil && gv.Compare(wv) == 0 {
			return ""
		}
	}
	if at == "" {
		at = "/"
	}
	return fmt.Sprintf("%s is %s, the engine passes %s", at, show(got), show(want))
}
