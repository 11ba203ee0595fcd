package actions

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// commandParallel bounds the actions of one command that run at once.
const commandParallel = 8

// PlanStep is what one action of a whole-vendor plan would take away, found by the
// executor's read-only Plan (accessors fingerprinted).
type PlanStep struct {
	// Credential names the credential (inventory name, or the name enumeration gave it).
	Credential string `json:"credential"`
	// Type is the action that takes it away.
	Type killswitch.ActionType `json:"type"`
	// Target describes it, as action records do.
	Target string `json:"target"`
	// Plan is the executor's plan; nil when it could not be planned (Error says why).
	Plan *Plan `json:"plan,omitempty"`
	// Error is why the plan lookup failed.
	Error string `json:"error,omitempty"`
}

// PlanAll plans, read-only and concurrently, the action that takes away each of
// creds, in the order of their names. Protected credentials are left out (callers
// report them); a credential of no known kind, or with no executor, gets a step with
// its Error.
func (r *Runner) PlanAll(ctx context.Context, vendor string, creds map[string]killswitch.Credential) []PlanStep {
	names := slices.Sorted(maps.Keys(creds))
	steps := make([]PlanStep, 0, len(names))
	for _, n := range names {
		if c := creds[n]; !c.Protected {
			steps = append(steps, PlanStep{Credential: n, Type: c.Kind.Action()})
		}
	}
	each(len(steps), func(i int) {
		s := &steps[i]
		t := Target{Vendor: vendor, Credential: s.Credential, Identity: creds[s.Credential],
			Action: playbooks.Action{Type: s.Type, Credential: s.Credential}, Fingerprint: r.d.Fingerprint}
		s.Target = r.describe(t)
		exec, ok := r.d.Executors[s.Type]
		if !ok {
			s.Error = "no executor for " + string(s.Type) + " is configured (no Vault?)"
			return
		}
		cctx, cancel := context.WithTimeout(ctx, r.s.CallTimeout)
		defer cancel()
		p, err := exec.Plan(cctx, t)
		if err != nil {
			s.Error = err.Error()
			return
		}
		s.Plan = &p
	})
	return steps
}

// Command carries out a decision a human commanded and a human approved (approver:
// the authority recorded with every step), such as cutting a whole vendor off: every
// action of req.Result is resolved against req.Vendor (which may hold credentials
// enumerated beyond the inventory), planned only in shadow and dry-run, and otherwise
// claimed, recorded, applied and verified like an approved action — the pause switch is
// checked immediately before every Apply; the other guards (cooldown, blast radius,
// budget, approval) do not hold what a human ordered and approved. The actions run
// concurrently. A retryable failure is returned as an error; claims keep a command run
// again exactly-once in effect.
//
// Identity entities are disabled (and verified) first, the rest after: an entity's
// Verify proves the cut with a token of the entity, which the same command may revoke.
func (r *Runner) Command(ctx context.Context, req Request, approver string) ([]incidents.ActionRef, error) {
	if approver == "" {
		return nil, killswitch.Permanent(killswitch.ReasonInvalid, errors.New("actions: a command needs the approver it runs on"))
	}
	payload, err := r.payload(req)
	if err != nil {
		return nil, err
	}
	acts := req.Result.Decision.Actions
	refs := make([]incidents.ActionRef, len(acts))
	errs := make([]error, len(acts))
	for _, first := range []bool{true, false} {
		var idx []int
		for i, a := range acts {
			if (a.Type == killswitch.ActionDisableEntity) == first {
				idx = append(idx, i)
			}
		}
		each(len(idx), func(k int) {
			i := idx[k]
			refs[i], errs[i] = r.command(ctx, req, acts[i], payload, approver)
		})
	}
	return refs, errors.Join(errs...)
}

// command runs one action of a command.
func (r *Runner) command(ctx context.Context, req Request, a playbooks.Action, payload []byte, approver string) (incidents.ActionRef, error) {
	j, exec, done, ref, err := r.prepare(ctx, req, a, payload)
	if done {
		return ref, err
	}
	return r.execute(ctx, j, exec, approver, true)
}

// each calls f(0…n-1), at most commandParallel at once, and returns when all returned.
func each(n int, f func(i int)) {
	sem := make(chan struct{}, commandParallel)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}
