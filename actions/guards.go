package actions

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// runGuards runs a chain for c: the guards in order, the first that holds wins; the
// consumers at the end together (see Consumer). It returns the holding guard's name and
// reason, or "" when the action may run.
func runGuards(ctx context.Context, guards []Guard, c Check) (name, hold string, err error) {
	n := len(guards)
	for n > 0 {
		if _, ok := guards[n-1].(Consumer); !ok {
			break
		}
		n--
	}
	for _, g := range guards[:n] {
		hold, err := g.Check(ctx, c)
		if err != nil {
			return "", "", fmt.Errorf("actions: guard %s: %w", g.Name(), err)
		}
		if hold != "" {
			return g.Name(), hold, nil
		}
	}
	consumers := guards[n:]
	holds, errs := make([]string, len(consumers)), make([]error, len(consumers))
	var wg sync.WaitGroup
	for i, g := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holds[i], errs[i] = g.Check(ctx, c)
		}()
	}
	wg.Wait()
	for i, g := range consumers {
		switch {
		case errs[i] != nil && err == nil:
			err = fmt.Errorf("actions: guard %s: %w", g.Name(), errs[i])
		case holds[i] != "" && name == "" && err == nil:
			name, hold = g.Name(), holds[i]
		}
	}
	if err == nil && name == "" {
		return "", "", nil
	}
	// Held or failed: give back what the others took.
	var refunds []error
	for i, g := range consumers {
		if errs[i] == nil && holds[i] == "" {
			if rerr := g.(Consumer).Refund(ctx, c); rerr != nil {
				refunds = append(refunds, fmt.Errorf("actions: refund %s: %w", g.Name(), rerr))
			}
		}
	}
	return name, hold, errors.Join(append([]error{err}, refunds...)...)
}

// Check is what a guard sees of one destructive action that passed target resolution
// and whose mode is enforce.
type Check struct {
	// Now is the time of the check (the runner's clock).
	Now time.Time
	// Action is the action's fleet-wide ID.
	Action string
	// Incident, Vendor and Credential say what the action is for and on.
	Incident, Vendor, Credential string
	// RequiresApproval reports that the playbooks asked for a human's approval, and
	// Reason is the decision's reason.
	RequiresApproval bool
	Reason           string
}

// A Guard may hold a destructive action for a human's approval. Guards run in a chain,
// in order, and the first that holds wins, so guards that consume something (the
// budgets, see Consumer) come last: a unit is kept only when nothing holds the action.
type Guard interface {
	// Name names the guard in ledger records, logs and held actions.
	Name() string
	// Check returns the reason to hold the action, "" to let it through, or an error
	// (then nothing runs, and the decision is handled again later).
	Check(ctx context.Context, c Check) (hold string, err error)
}

// A Consumer is a guard that takes a unit of something (a budget) when it lets an action
// through, and can give it back (the unit is the action's: Refund needs only c.Action
// and c.Vendor, and refunding twice is harmless). The consumers at the end of a chain
// are checked at the same time (their writes then cost one storage round, not one
// each); when one of them holds the action, or fails, the units the others took are
// given back.
type Consumer interface {
	Guard
	// Refund gives back the unit Check took for c.Action, if it holds one.
	Refund(ctx context.Context, c Check) error
}

// Guards returns the standard chain on the control plane c, in order: pause, storm, approval,
// cooldown, breaker, blast radius, budget.
func Guards(c *Control) []Guard {
	return []Guard{PauseGuard{c}, StormGuard{c}, ApprovalGuard{}, CooldownGuard{c}, BreakerGuard{c}, BlastRadiusGuard{c}, BudgetGuard{c}}
}

// PauseGuard holds every destructive action while automation is paused (G1). The runner
// checks the pause switch again immediately before every Apply (see Control.gate).
type PauseGuard struct{ C *Control }

// Name implements Guard.
func (PauseGuard) Name() string { return "paused" }

// Check implements Guard.
func (g PauseGuard) Check(ctx context.Context, _ Check) (string, error) {
	p, err := g.C.get(ctx, pauseKey)
	if err != nil || !p.On {
		return "", err
	}
	return fmt.Sprintf("automation paused by %s: %s", p.By, p.Reason), nil
}

// ApprovalGuard holds the actions of a decision whose playbooks require approval.
type ApprovalGuard struct{}

// Name implements Guard.
func (ApprovalGuard) Name() string { return "approval" }

// Check implements Guard.
func (ApprovalGuard) Check(_ context.Context, c Check) (string, error) {
	if !c.RequiresApproval {
		return "", nil
	}
	return "the playbooks require approval: " + c.Reason, nil
}

// CooldownGuard holds a destructive action on a credential another incident acted on
// less than Settings.Cooldown ago.
type CooldownGuard struct{ C *Control }

// Name implements Guard.
func (CooldownGuard) Name() string { return "cooldown" }

// Check implements Guard.
func (g CooldownGuard) Check(ctx context.Context, c Check) (string, error) {
	cool, ok, err := g.C.cooldown(ctx, c.Vendor, c.Credential)
	if err != nil || !ok || cool.By == c.Incident || c.Now.Sub(cool.At) >= g.C.s.Cooldown {
		return "", err
	}
	return fmt.Sprintf("%s/%s was acted on by incident %s %s ago (cooldown %s)",
		c.Vendor, c.Credential, cool.By, c.Now.Sub(cool.At).Round(time.Second), g.C.s.Cooldown), nil
}

// BreakerGuard holds every destructive action while the budget's circuit breaker is
// open: approval-only mode (G2).
type BreakerGuard struct{ C *Control }

// Name implements Guard.
func (BreakerGuard) Name() string { return "breaker" }

// Check implements Guard.
func (g BreakerGuard) Check(ctx context.Context, _ Check) (string, error) {
	br, err := g.C.get(ctx, breakerKey)
	if err != nil || !br.On {
		return "", err
	}
	return "the revocation budget's circuit breaker is open (approval-only mode): " + br.Reason, nil
}

// Refund implements Consumer.
func (g BlastRadiusGuard) Refund(ctx context.Context, c Check) error {
	return g.C.release(ctx, vendorBudgetKey(c.Vendor), c.Action)
}

// BlastRadiusGuard consumes one unit of the vendor's budget and holds the action when
// it is spent (G3): never more than Settings.VendorBudget destructive actions on one
// vendor in any interval of length Settings.BudgetWindow (a sliding window shared by
// every instance).
type BlastRadiusGuard struct{ C *Control }

// Name implements Guard.
func (BlastRadiusGuard) Name() string { return "blast_radius" }

// Check implements Guard.
func (g BlastRadiusGuard) Check(ctx context.Context, c Check) (string, error) {
	s := g.C.s
	ok, err := g.C.consume(ctx, vendorBudgetKey(c.Vendor), c.Action, c.Now, s.VendorBudget)
	if err != nil || ok {
		return "", err
	}
	return fmt.Sprintf("vendor %s reached %d destructive actions within the last %s", c.Vendor, s.VendorBudget, s.BudgetWindow), nil
}

// Refund implements Consumer.
func (g BudgetGuard) Refund(ctx context.Context, c Check) error {
	return g.C.release(ctx, budgetKey, c.Action)
}

// BudgetGuard consumes one unit of the fleet-wide budget; when it is spent it opens the
// circuit breaker and holds the action (G2). The budget is a sliding window shared by
// every instance: never more than Settings.Budget destructive actions in any interval
// of length Settings.BudgetWindow (up to the instances' clock skew).
type BudgetGuard struct{ C *Control }

// Name implements Guard.
func (BudgetGuard) Name() string { return "budget" }

// Check implements Guard.
func (g BudgetGuard) Check(ctx context.Context, c Check) (string, error) {
	s := g.C.s
	ok, err := g.C.consume(ctx, budgetKey, c.Action, c.Now, s.Budget)
	if err != nil || ok {
		return "", err
	}
	reason := fmt.Sprintf("the fleet-wide budget of %d destructive actions per %s is spent", s.Budget, s.BudgetWindow)
	if err := g.C.openBreaker(ctx, reason); err != nil {
		return "", err
	}
	return reason + "; the circuit breaker opened (approval-only mode)", nil
}
