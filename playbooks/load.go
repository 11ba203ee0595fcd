package playbooks

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/rego"
)

// ErrCompile is wrapped (through *CompileError) by every error about playbooks that do
// not load, parse, compile or follow the playbook conventions.
var ErrCompile = errors.New("playbooks do not compile")

// Bounds on what a library may hold.
const (
	maxModuleBytes = 1 << 20
	maxLibraryByte = 16 << 20
	maxFiles       = 2000
)

// Source is a tree of playbook files: .rego modules (_test.rego files are tests) and the
// data files (.json, .yaml, .yml) the tests read, among them the example input documents
// (inputs/NAME/data.json, seen as data.inputs.NAME).
type Source struct {
	// Name prefixes the file names shown in errors, test results and coverage: "rego" for
	// the shipped library, the directory path for a directory.
	Name string
	// FS holds the files.
	FS fs.FS
	// Dir is the directory on disk that FS reads, watched for hot reload; empty for the
	// embedded library.
	Dir string
}

// Shipped returns the library shipped in the binary (package rego).
func Shipped() Source { return Source{Name: "rego", FS: rego.FS()} }

// DirSource returns a source reading the directory dir.
func DirSource(dir string) Source {
	dir = filepath.Clean(dir)
	return Source{Name: dir, FS: os.DirFS(dir), Dir: dir}
}

// Problem is one error located in a file.
type Problem struct {
	// File is the file name (source name joined with the path inside the source).
	File string `json:"file"`
	// Line is the 1-based line, 0 when unknown.
	Line int `json:"line"`
	// Message says what is wrong.
	Message string `json:"message"`
}

// String renders the problem as file:line: message.
func (p Problem) String() string {
	switch {
	case p.File == "":
		return p.Message
	case p.Line == 0:
		return p.File + ": " + p.Message
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Message)
}

// CompileError lists every problem found while loading and compiling playbooks. It
// matches ErrCompile with errors.Is.
type CompileError struct {
	// Problems are sorted by file and line.
	Problems []Problem
}

// Error lists the problems, one per line.
func (e *CompileError) Error() string {
	var b strings.Builder
	b.WriteString(ErrCompile.Error())
	b.WriteString(":")
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Is reports whether target is ErrCompile.
func (e *CompileError) Is(target error) bool { return target == ErrCompile }

func newCompileError(ps []Problem) *CompileError {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].File != ps[j].File {
			return ps[i].File < ps[j].File
		}
		return ps[i].Line < ps[j].Line
	})
	return &CompileError{Problems: ps}
}

// fromASTErrors converts OPA errors (parse or compile) to problems.
func fromASTErrors(err error) []Problem {
	var errs ast.Errors
	if !errors.As(err, &errs) {
		var one *ast.Error
		if errors.As(err, &one) {
			errs = ast.Errors{one}
		} else {
			return []Problem{{Message: err.Error()}}
		}
	}
	ps := make([]Problem, 0, len(errs))
	for _, e := range errs {
		p := Problem{Message: e.Code + ": " + e.Message}
		if e.Location != nil {
			p.File, p.Line = e.Location.File, e.Location.Row
		}
		ps = append(ps, p)
	}
	return ps
}

// file is one loaded file.
type file struct {
	name string // source name joined with rel: shown to humans
	rel  string // path inside the source: hashed into the revision
	src  []byte
}

// library is the content of a set of sources.
type library struct {
	modules []file // playbooks and helpers
	tests   []file // _test.rego
	data    []file // .json, .yaml and .yml files, when loaded with data
}

// revision hashes the non-test modules: their paths inside their sources and contents,
// sorted, so that the same playbooks give the same revision wherever they are installed.
func (l *library) revision() string {
	fs := append([]file(nil), l.modules...)
	sort.Slice(fs, func(i, j int) bool {
		if fs[i].rel != fs[j].rel {
			return fs[i].rel < fs[j].rel
		}
		return string(fs[i].src) < string(fs[j].src)
	})
	h := sha256.New()
	var n [8]byte
	for _, f := range fs {
		binary.BigEndian.PutUint64(n[:], uint64(len(f.rel)))
		h.Write(n[:])
		h.Write([]byte(f.rel))
		binary.BigEndian.PutUint64(n[:], uint64(len(f.src)))
		h.Write(n[:])
		h.Write(f.src)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// loadLibrary reads every source. Hidden files and directories (a leading dot) are
// skipped; so are files other than .rego and, when withData (tests and checks; the engine
// evaluates on input alone), the data files OPA's loader reads: .json, .yaml and .yml.
func loadLibrary(sources []Source, withData bool) (*library, error) {
	if len(sources) == 0 {
		return nil, newCompileError([]Problem{{Message: "no playbook source given"}})
	}
	lib := &library{}
	var problems []Problem
	total, count := 0, 0
	for _, s := range sources {
		if s.FS == nil {
			problems = append(problems, Problem{File: s.Name, Message: "source has no file system"})
			continue
		}
		err := fs.WalkDir(s.FS, ".", func(p string, d fs.DirEntry, err error) error {
			name := joinName(s.Name, p)
			if err != nil {
				problems = append(problems, Problem{File: name, Message: err.Error()})
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if p != "." && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				return nil
			}
			isRego := strings.HasSuffix(p, ".rego")
			isData := withData && isDataFile(p)
			if !isRego && !isData {
				return nil
			}
			count++
			if count > maxFiles {
				return fmt.Errorf("more than %d files", maxFiles)
			}
			b, err := fs.ReadFile(s.FS, p)
			if err != nil {
				problems = append(problems, Problem{File: name, Message: err.Error()})
				return nil
			}
			if len(b) > maxModuleBytes {
				problems = append(problems, Problem{File: name, Message: fmt.Sprintf("larger than %d bytes", maxModuleBytes)})
				return nil
			}
			total += len(b)
			if total > maxLibraryByte {
				return fmt.Errorf("library larger than %d bytes", maxLibraryByte)
			}
			f := file{name: name, rel: p, src: b}
			switch {
			case isData:
				lib.data = append(lib.data, f)
			case strings.HasSuffix(p, "_test.rego"):
				lib.tests = append(lib.tests, f)
			default:
				lib.modules = append(lib.modules, f)
			}
			return nil
		})
		if err != nil {
			problems = append(problems, Problem{File: s.Name, Message: err.Error()})
		}
	}
	if len(problems) > 0 {
		return nil, newCompileError(problems)
	}
	return lib, nil
}

func joinName(source, p string) string {
	if p == "." {
		return source
	}
	if source == "" {
		return p
	}
	return source + "/" + p
}

// capabilities are OPA's builtins minus the non-deterministic ones (http.send,
// net.lookup_ip_addr, rand.intn, uuid.rfc4122, time.now_ns, opa.runtime…): a decision
// depends on its input alone, so replay gives the same decisions and a playbook cannot
// reach the network. Playbooks read the time from input.now.
func capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	keep := caps.Builtins[:0:0]
	for _, b := range caps.Builtins {
		if !b.Nondeterministic {
			keep = append(keep, b)
		}
	}
	caps.Builtins = keep
	return caps
}

// newCompiler returns the strict compiler every playbook set is compiled with.
func newCompiler(printStatements bool) *ast.Compiler {
	return ast.NewCompiler().
		WithStrict(true).
		WithCapabilities(capabilities()).
		WithEnablePrintStatements(printStatements).
		WithDefaultRegoVersion(ast.RegoV1)
}

// parseFiles parses Rego files with annotations.
func parseFiles(files []file) (map[string]*ast.Module, []Problem) {
	mods := make(map[string]*ast.Module, len(files))
	var problems []Problem
	for _, f := range files {
		m, err := ast.ParseModuleWithOpts(f.name, string(f.src), ast.ParserOptions{
			ProcessAnnotation: true, RegoVersion: ast.RegoV1,
		})
		if err != nil {
			problems = append(problems, fromASTErrors(err)...)
			continue
		}
		if m == nil {
			problems = append(problems, Problem{File: f.name, Message: "empty module"})
			continue
		}
		mods[f.name] = m
	}
	return mods, problems
}

// Playbook describes one loaded playbook.
type Playbook struct {
	// Name is the package path without "data.", e.g. killswitch.playbooks.exfiltration.
	Name string `json:"name"`
	// Title is the METADATA title.
	Title string `json:"title"`
	// Description is the METADATA description.
	Description string `json:"description"`
	// Mode is custom.mode: enforce, shadow or dry-run.
	Mode killswitch.Mode `json:"mode"`
	// File and Line locate the entrypoint rule.
	File string `json:"file"`
	Line int    `json:"line"`

	ref ast.Ref // data.<package>.decision
}

// entrypointRule is the one rule name the engine evaluates in a playbook.
const entrypointRule = "decision"

// discover finds the playbooks of a compiled set and checks the conventions:
//   - an `entrypoint: true` annotation must be on a rule named decision (a misspelt rule
//     name would never be evaluated);
//   - a rule named decision must carry `entrypoint: true` and must be total: a complete
//     rule with a `default decision := ...`;
//   - the package has METADATA with a title, a description and custom.mode (enforce,
//     shadow or dry-run);
//   - a package declaring custom.mode has an entrypoint;
//   - there is at least one playbook.
func discover(c *ast.Compiler) ([]Playbook, []Problem) {
	var problems []Problem
	bad := func(loc *ast.Location, format string, args ...any) {
		p := Problem{Message: fmt.Sprintf(format, args...)}
		if loc != nil {
			p.File, p.Line = loc.File, loc.Row
		}
		problems = append(problems, p)
	}
	type pkgInfo struct {
		ann *ast.Annotations
	}
	pkgs := map[string]*pkgInfo{}
	entry := map[string]*ast.AnnotationsRef{} // package path -> entrypoint annotation
	for _, ar := range c.GetAnnotationSet().Flatten() {
		a := ar.Annotations
		if a.Scope == "package" {
			key := ar.Path.String()
			if pkgs[key] == nil {
				pkgs[key] = &pkgInfo{}
			}
			pkgs[key].ann = a
		}
		if !a.Entrypoint {
			continue
		}
		rule := ar.GetRule()
		if rule == nil {
			bad(a.Location, "entrypoint: true on %s: put it on the rule `decision`, not on a package", ar.Path)
			continue
		}
		if len(ar.Path) < 2 || !ar.Path[len(ar.Path)-1].Equal(ast.StringTerm(entrypointRule)) {
			bad(a.Location, "entrypoint %s: a playbook's entrypoint must be the rule `decision` (a misspelt entrypoint is never evaluated)", ar.Path)
			continue
		}
		pkg := ar.Path[:len(ar.Path)-1].String()
		entry[pkg] = ar
	}
	var out []Playbook
	seen := map[string]bool{}
	for _, mod := range c.Modules {
		pkg := mod.Package.Path.String()
		for _, r := range mod.Rules {
			ref := r.Head.Ref()
			if len(ref) == 0 || ref[0].Value.Compare(ast.Var(entrypointRule)) != 0 {
				continue
			}
			if len(ref) > 1 {
				bad(r.Location, "rule %s: `decision` must be one complete rule, not a reference", ref)
				continue
			}
			if _, ok := entry[pkg]; !ok {
				bad(r.Location, "rule decision in package %s is not marked `entrypoint: true`: add a METADATA block with `entrypoint: true` above it", strings.TrimPrefix(pkg, "data."))
				entry[pkg] = nil // report once
			}
		}
	}
	pkgPaths := slices.Sorted(maps.Keys(entry))
	for _, pkg := range pkgPaths {
		ar := entry[pkg]
		if ar == nil || seen[pkg] {
			continue
		}
		seen[pkg] = true
		name := strings.TrimPrefix(pkg, "data.")
		rules := c.GetRulesExact(ar.Path)
		hasDefault, ok := false, true
		for _, r := range rules {
			if len(r.Head.Args) > 0 {
				bad(r.Location, "%s.decision must not be a function", name)
				ok = false
			}
			if r.Head.RuleKind() != ast.SingleValue || r.Head.DocKind() != ast.CompleteDoc {
				bad(r.Location, "%s.decision must be a complete rule (decision := {...}), not a partial set or object", name)
				ok = false
			}
			if r.Default {
				hasDefault = true
			}
		}
		if !hasDefault {
			bad(ar.Annotations.Location, "%s.decision has no default: declare `default decision := {\"actions\": []}` so the decision is always defined (an undefined decision escalates)", name)
			ok = false
		}
		pb := Playbook{Name: name, ref: ar.Path.Copy()}
		if ar.Location != nil {
			pb.File, pb.Line = ar.Location.File, ar.Location.Row
		}
		info := pkgs[pkg]
		if info == nil || info.ann == nil {
			bad(ar.Annotations.Location, "package %s has no package METADATA: give it a title, a description and custom.mode", name)
			continue
		}
		a := info.ann
		pb.Title, pb.Description = a.Title, a.Description
		if strings.TrimSpace(a.Title) == "" {
			bad(a.Location, "package %s: METADATA title is required", name)
			ok = false
		}
		if strings.TrimSpace(a.Description) == "" {
			bad(a.Location, "package %s: METADATA description is required", name)
			ok = false
		}
		mode, _ := a.Custom["mode"].(string)
		if m := killswitch.Mode(mode); m != "" && m.Valid() {
			pb.Mode = m
		} else {
			bad(a.Location, "package %s: METADATA custom.mode must be enforce, shadow or dry-run, got %q", name, mode)
			ok = false
		}
		if ok {
			out = append(out, pb)
		}
	}
	pkgWithMode := make([]string, 0, len(pkgs))
	for p, info := range pkgs {
		if info.ann != nil && info.ann.Custom["mode"] != nil {
			pkgWithMode = append(pkgWithMode, p)
		}
	}
	sort.Strings(pkgWithMode)
	for _, p := range pkgWithMode {
		if _, ok := entry[p]; !ok {
			bad(pkgs[p].ann.Location, "package %s declares custom.mode but has no rule `decision` marked `entrypoint: true`", strings.TrimPrefix(p, "data."))
		}
	}
	if len(out) == 0 && len(problems) == 0 {
		problems = append(problems, Problem{Message: "no playbook found: a playbook is a package with a rule `decision` marked `entrypoint: true`"})
	}
	return out, problems
}

// compileSet parses and compiles modules (and tests when withTests) strictly and, for the
// engine, discovers the playbooks.
func compileSet(lib *library, withTests, printStatements bool) (*ast.Compiler, map[string]*ast.Module, []Playbook, error) {
	files := lib.modules
	if withTests {
		files = append(append([]file(nil), lib.modules...), lib.tests...)
	}
	mods, problems := parseFiles(files)
	if len(problems) > 0 {
		return nil, nil, nil, newCompileError(problems)
	}
	c := newCompiler(printStatements)
	c.Compile(mods)
	if c.Failed() {
		return nil, nil, nil, newCompileError(fromASTErrors(c.Errors))
	}
	pbs, problems := discover(c)
	if len(problems) > 0 {
		return nil, nil, nil, newCompileError(problems)
	}
	return c, mods, pbs, nil
}
