// Package rego embeds the shipped playbook library: the Rego playbooks under killswitch/,
// their _test.rego files and the example input documents that the tests, `killswitch
// playbook check` and the benchmarks share, one per directory (inputs/NAME/data.json).
//
// The directory is laid out for stock OPA tools as well: OPA's loader puts a data file at
// its directory's path, so `opa test rego/` sees inputs/NAME/data.json as
// data.inputs.NAME, as `killswitch playbook test` does, and the files are `opa fmt` clean
// and pass `opa check --strict` (package playbooks tests all three).
//
// The files are read through FS; package playbooks loads them like any directory given
// with --playbooks.
package rego

import (
	"embed"
	"io/fs"
)

//go:embed killswitch inputs
var files embed.FS

// FS returns the shipped library as a read-only file system rooted at this directory
// (paths such as "killswitch/playbooks/exfiltration.rego" and "inputs/silence/data.json").
func FS() fs.FS { return files }
