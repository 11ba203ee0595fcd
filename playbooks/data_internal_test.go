package playbooks

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/killswitch-dev/killswitch/detectors"
)

// TestLoadDataPlacesFilesLikeOPA: for the same directories, loadData builds exactly the
// data tree that OPA's file loader (what `opa test DIR ...` uses) builds, and refuses what
// it refuses.
func TestLoadDataPlacesFilesLikeOPA(t *testing.T) {
	for _, tc := range []struct {
		name string
		dirs []map[string]string
		// wantErr is a part of killswitch's message when both refuse the directories.
		wantErr string
	}{
		{name: "an input per directory", dirs: []map[string]string{{
			"inputs/a/data.json": `{"x": 1, "y": [1.50, "s", null, true]}`,
			"inputs/b/data.json": `{"x": 2}`,
		}}},
		{name: "yaml and yml", dirs: []map[string]string{{
			"inputs/a/data.yaml":       "x: 1\ny:\n  - 1.5\n  - s\nz: ~\n",
			"fixtures/limits/data.yml": "max: 3\nname: 'q'\n",
		}}},
		{name: "a file at the top merges into data", dirs: []map[string]string{{
			"data.json":         `{"fixtures": {"a": 1}, "top": "t"}`,
			"fixtures/b.json":   `{"b": 2}`,
			"deep/er/and/x.yml": "[1, 2]\n",
		}}},
		{name: "the file name does not matter, only its directory", dirs: []map[string]string{{
			"conf/one.json": `{"a": 1}`,
			"conf/two.json": `{"b": 2}`,
		}}},
		{name: "two directories merge", dirs: []map[string]string{
			{"inputs/a/data.json": `{"x": 1}`},
			{"inputs/b/data.json": `{"x": 2}`, "data.json": `{"inputs": {"c": {"x": 3}}}`},
		}},
		{name: "other files are not data", dirs: []map[string]string{{
			"notes.txt":           "not data",
			"inputs/a/data.json":  `{"x": 1}`,
			"inputs/a/README.md":  "# a",
			"inputs/a/script.sh":  "#!/bin/sh",
			"inputs/a/data.jsonl": "{}",
		}}},
		{name: "two files giving one path two values", dirs: []map[string]string{{
			"conf/one.json": `{"a": 1}`,
			"conf/two.json": `{"a": 2}`,
		}}, wantErr: "conflicting values at data.conf.a, also defined in"},
		{name: "a conflict across directories", dirs: []map[string]string{
			{"inputs/a/data.json": `{"x": 1}`},
			{"inputs/a/data.json": `{"x": 2}`},
		}, wantErr: "conflicting values at data.inputs.a.x"},
		{name: "a value where another file has an object", dirs: []map[string]string{{
			"data.json":      `{"conf": 1}`,
			"conf/one.json":  `{"a": 1}`,
			"other/x.yaml":   "y: 1",
			"other/y/z.yaml": "1",
		}}, wantErr: "conflicting values at data.conf"},
		{name: "a top file that is not an object", dirs: []map[string]string{{
			"data.json": `[1]`,
		}}, wantErr: "must hold an object"},
		{name: "invalid json", dirs: []map[string]string{{
			"conf/data.json": `{"a": `,
		}}, wantErr: "not a valid data file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var paths []string
			var sources []Source
			for _, files := range tc.dirs {
				dir := writeTree(t, files)
				paths = append(paths, dir)
				sources = append(sources, DirSource(dir))
			}
			want, opaErr := loader.NewFileLoader().Filtered(paths, nil)
			lib, err := loadLibrary(sources, true)
			if err != nil {
				t.Fatal(err)
			}
			td, err := loadData(lib)
			if tc.wantErr != "" {
				if opaErr == nil || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("OPA's loader: %v; loadData: %v; want both to refuse with %q", opaErr, err, tc.wantErr)
				}
				return
			}
			if opaErr != nil || err != nil {
				t.Fatalf("OPA's loader: %v; loadData: %v", opaErr, err)
			}
			got, err := ast.InterfaceToValue(td.docs)
			if err != nil {
				t.Fatal(err)
			}
			exp, err := ast.InterfaceToValue(want.Documents)
			if err != nil {
				t.Fatal(err)
			}
			if got.Compare(exp) != 0 {
				t.Fatalf("loadData = %v\nOPA's loader = %v", got, exp)
			}
		})
	}
}

// TestOldInputLayoutIsRefusedWithTheMove: an example input written the old way,
// inputs/NAME.json, is refused with the path to move it to; stock OPA cannot load two of
// them either.
func TestOldInputLayoutIsRefusedWithTheMove(t *testing.T) {
	input := `{"detection": {"vendor": "v", "detector": "spike", "severity": "low"}, "vendor": {"name": "v"}}`
	dir := writeTree(t, map[string]string{"inputs/alpha.json": input, "inputs/beta.json": input})
	if _, err := loader.NewFileLoader().Filtered([]string{dir}, nil); err == nil {
		t.Fatal("OPA's loader accepts two inputs in inputs/")
	}
	lib, err := loadLibrary([]Source{DirSource(dir)}, true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = loadData(lib)
	for _, want := range []string{
		filepath.Join(dir, "inputs", "alpha.json") + ": an example input directly in inputs/ is the old layout",
		"move it to inputs/alpha/data.json", "move it to inputs/beta/data.json",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

// TestCanonicalDrift: an example input written differently from what the engine passes is
// described at its first difference; one written canonically has none.
func TestCanonicalDrift(t *testing.T) {
	valid := Input{
		Detection: detectors.Detection{Key: detectors.Key{Vendor: "v"}, Detector: detectors.Kind("spike"), Severity: detectors.Severity("low")},
		Vendor:    VendorView{Name: "v"},
	}
	canonical, _, err := valid.encode()
	if err != nil {
		t.Fatal(err)
	}
	edited := func(edit func(doc map[string]any)) string {
		var doc map[string]any
		if err := json.Unmarshal(canonical, &doc); err != nil {
			t.Fatal(err)
		}
		edit(doc)
		b, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{name: "canonical", doc: string(canonical), want: ""},
		{name: "a number written differently", doc: strings.Replace(string(canonical), `"dead_letter_rate":0`, `"dead_letter_rate":0.0`, 1), want: ""},
		{name: "a missing field", doc: edited(func(doc map[string]any) { delete(doc["detection"].(map[string]any), "detected_at") }),
			want: "/detection/detected_at is absent, the engine passes \"0001-01-01T00:00:00Z\""},
		{name: "a time not in UTC", doc: edited(func(doc map[string]any) { doc["now"] = "2026-02-05T11:00:00+01:00" }),
			want: `/now is "2026-02-05T11:00:00+01:00", the engine passes "2026-02-05T10:00:00Z"`},
		{name: "an empty list written as null", doc: edited(func(doc map[string]any) { doc["incident"].(map[string]any)["actions"] = nil }),
			want: "/incident/actions is null, the engine passes []"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := DecodeInput(strings.NewReader(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := util.UnmarshalJSON([]byte(tc.doc), &doc); err != nil {
				t.Fatal(err)
			}
			got, err := canonicalDrift(exampleInput{input: in, doc: doc})
			if err != nil {
				t.Fatal(err)
			}
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("drift = %q, want %q", got, tc.want)
			}
		})
	}
}

// writeTree writes files (slash paths relative to a new directory -> content).
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
