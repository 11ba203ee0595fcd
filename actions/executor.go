// Package actions carries out decisions. For each action of a decision it resolves the
// target against the inventory (protected credentials are never targets), applies the
// strictest mode, runs the guard chain (pause, approval, cooldown, breaker, blast
// radius, budget: each a Guard that may hold the action for a human), takes an
// idempotency claim, records the intent in the ledger, checks the pause switch and the
// breaker once more, and only then has the executor apply it (bounded retries with
// backoff, a deadline per call, the pause and the breaker checked again before each
// attempt) and verify it. The budgets are sliding windows shared by every instance.
//
// The package is organised around three types:
//
//   - Runner: the executor loop (Act), the one way anything is applied;
//   - Control: the fleet-wide control plane — pause switch, circuit breaker, budget
//     windows, cooldown stamps — kept in a Store (actions/natskv in the service);
//   - Approvals: held actions, approved once by a named person, rejected, or expired;
//     an approved action that fails retryably is retried until its deadline, one that
//     failed may be approved again.
//
// Every executor has three steps: Plan (read-only: exactly what would die), Apply
// (idempotent: already gone is success) and Verify (proof that the credential no longer
// works; a successful API call is not proof). actions/vault has the Vault executors,
// actions/nats the NATS ones (notify, nats.publish); the webhook executor is here.
package actions

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// Target is what one action acts on, resolved from the decision and the inventory.
type Target struct {
	// Incident is the incident the action is for.
	Incident string
	// Vendor is the vendor the incident is about.
	Vendor string
	// Credential is the inventory name of the credential (empty for actions that do not
	// target a credential: notify, nats.publish, webhook).
	Credential string
	// Identity says how Vault knows the credential (accessor, lease, path, policy…).
	Identity killswitch.Credential
	// Action is the action as decided.
	Action playbooks.Action
	// Payload is the JSON document describing the incident and decision, for actions
	// that send something (nats.publish, webhook, notify).
	Payload []byte
	// Fingerprint is set by the runner: executors render accessors with it in plans,
	// outcomes and errors, never in clear.
	Fingerprint Fingerprinter
}

// Plan says exactly what an action would do, found by read-only lookups.
type Plan struct {
	// Summary says it in one sentence.
	Summary string `json:"summary"`
	// Targets lists exactly what would die (accessors are fingerprinted, never in clear).
	Targets []string `json:"targets"`
	// AlreadyGone reports that there is nothing left to take away.
	AlreadyGone bool `json:"already_gone"`
}

// Outcome is what Apply did.
type Outcome struct {
	// AlreadyDone reports that the credential was already gone (success, recorded).
	AlreadyDone bool `json:"already_done"`
	// Detail says what was done.
	Detail string `json:"detail"`
}

// Verification is Verify's proof.
type Verification struct {
	// Dead reports that the credential no longer works.
	Dead bool `json:"dead"`
	// Evidence says what was checked and what it answered.
	Evidence string `json:"evidence"`
}

// Executor carries out one action type. Errors follow the error model of the
// killswitch package: mark those no retry can cure with killswitch.Permanent (a 403,
// an inventory mistake); any other error is retried, within Settings.Attempts.
type Executor interface {
	// Plan looks up, read-only, exactly what Apply would take away.
	Plan(ctx context.Context, t Target) (Plan, error)
	// Apply does it. It is idempotent: when the credential is already gone it returns
	// an Outcome with AlreadyDone and no error.
	Apply(ctx context.Context, t Target) (Outcome, error)
	// Verify proves that it is done (the credential no longer works). For actions with
	// nothing to prove (notify) it reports Dead with the evidence that it was sent.
	Verify(ctx context.Context, t Target) (Verification, error)
}

// Registry maps action types to executors. It is a value built by the caller.
type Registry map[killswitch.ActionType]Executor

// Fingerprinter renders identifiers (token accessors, secret-id accessors) for logs,
// plans and the ledger without revealing them: a keyed hash.
type Fingerprinter struct {
	key []byte
}

// NewFingerprinter returns a Fingerprinter with the given key (per deployment; keep it
// stable so fingerprints can be correlated across restarts).
func NewFingerprinter(key []byte) Fingerprinter { return Fingerprinter{key: key} }

// Of returns "fp:" and the first 12 hex digits of HMAC-SHA256(key, s).
func (f Fingerprinter) Of(s string) string {
	m := hmac.New(sha256.New, f.key)
	m.Write([]byte(s))
	return "fp:" + hex.EncodeToString(m.Sum(nil))[:12]
}
