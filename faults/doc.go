// Package faults is Killswitch's fault suite, in one place: each test plays an attacker
// who can publish one message, or a failure of something Killswitch depends on, against
// the real binary or the real pipeline, with a real NATS server, the real dev Vault
// (behind a proxy that injects outages and kills the process at a chosen step) and
// PostgreSQL where database credentials are involved.
//
// Run it with `go test ./faults/` (the short form CI runs, part of scripts/test), or
// with `scripts/faults` for the long form (every kill point several times over, more
// forged events); `go test ./faults/ -v` prints, per fault, what was observed. Tests
// that need the dev Vault fail, not skip, when CI=true.
//
// The package holds tests only.
package faults
