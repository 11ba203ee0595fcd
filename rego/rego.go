// Package rego embeds the shipped playbook library: the Rego playbooks under killswitch/,
// their _test.rego files and the example input documents under inputs/ that the tests,
// `killswitch playbook check` and the benchmarks share.
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
// (paths such as "killswitch/playbooks/exfiltration.rego" and "inputs/silence.json").
func FS() fs.FS { return files }
