package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Approve runs a held action, once: the approval is bound to that one action, with the
// approver and the time. An expired approval window runs nothing (ErrExpired). The
// approved action skips the budget and the breaker (a human decided) but still takes
// its idempotency claim.
func (r *Runner) Approve(ctx context.Context, id, approver, comment string) (ledger.ActionRef, error) {
	h, rev, err := r.decide(ctx, id, approver, comment, "approved")
	if err != nil {
		return ledger.ActionRef{}, err
	}
	j := r.heldJob(h)
	var exec Executor
	if !r.plan {
		var ok bool
		if exec, ok = r.d.Executors[h.Action.Type]; !ok {
			return r.afterHeld(ctx, h, rev, j, ledger.ActionRef{}, fmt.Errorf("no executor for %s is configured", h.Action.Type))
		}
	}
	if v, ok := r.d.Inventory[h.Vendor]; ok {
		cred, ok := v.Credentials[h.Credential]
		if !ok || cred.Protected {
			return r.afterHeld(ctx, h, rev, j, ledger.ActionRef{}, Permanent(fmt.Errorf("credential %s/%s is no longer revocable (removed from the inventory or protected)", h.Vendor, h.Credential)))
		}
		j.target.Identity = cred
	} else {
		return r.afterHeld(ctx, h, rev, j, ledger.ActionRef{}, Permanent(fmt.Errorf("vendor %s is no longer in the inventory", h.Vendor)))
	}
	j.ref.Target = r.describe(j.target)
	if err := r.record(ctx, j, "approved", Event{Status: ledger.ActionHeld, Approver: approver, Reason: comment}); err != nil {
		return ledger.ActionRef{}, err
	}
	ref, err := r.execute(ctx, j, exec, approver)
	return r.afterHeld(ctx, h, rev, j, ref, err)
}

// afterHeld closes the held record and tells the incident.
func (r *Runner) afterHeld(ctx context.Context, h Held, rev uint64, j *job, ref ledger.ActionRef, err error) (ledger.ActionRef, error) {
	if ref.ID == "" {
		j.ref.Status, j.ref.At = ledger.ActionFailed, r.d.Clock.Now()
		if err != nil {
			j.ref.Detail = err.Error()
		}
		ref = j.ref
		_ = r.record(ctx, j, "failed", Event{Status: ledger.ActionFailed, Error: j.ref.Detail})
	}
	h.State = "done"
	if b, merr := json.Marshal(h); merr == nil {
		_, _ = r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev)
	}
	if r.d.OnUpdate != nil {
		r.d.OnUpdate(ctx, h.Incident, h.Vendor, h.Credential, ref)
	}
	return ref, err
}

// Reject drops a held action; nothing runs.
func (r *Runner) Reject(ctx context.Context, id, approver, comment string) error {
	h, _, err := r.decide(ctx, id, approver, comment, "rejected")
	if err != nil {
		return err
	}
	j := r.heldJob(h)
	j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionRejected, r.d.Clock.Now(), "rejected by "+approver
	if err := r.record(ctx, j, "rejected", Event{Status: ledger.ActionRejected, Approver: approver, Reason: comment}); err != nil {
		return err
	}
	if r.d.OnUpdate != nil {
		r.d.OnUpdate(ctx, h.Incident, h.Vendor, h.Credential, j.ref)
	}
	return nil
}

// decide moves a pending held action to state, once (compare-and-set). A held action
// past its expiry is marked expired instead and ErrExpired returned.
func (r *Runner) decide(ctx context.Context, id, approver, comment, state string) (Held, uint64, error) {
	var h Held
	rev, ok, err := getJSON(ctx, r.d.Store, ApprovalsBucket, id, &h)
	if err != nil {
		return h, 0, err
	}
	if !ok {
		return h, 0, fmt.Errorf("%w: %s", ErrUnknownAction, id)
	}
	now := r.d.Clock.Now()
	if h.State == "pending" && !now.Before(h.ExpiresAt) {
		if err := r.expire(ctx, h, rev); err != nil {
			return h, 0, err
		}
		return h, 0, fmt.Errorf("%w: %s expired at %s; nothing ran", ErrExpired, id, h.ExpiresAt.Format(time.RFC3339))
	}
	if h.State != "pending" {
		return h, 0, fmt.Errorf("%w: %s is %s", ErrDecided, id, h.State)
	}
	h.State, h.Approver, h.Comment, h.DecidedAt = state, approver, comment, now
	b, _ := json.Marshal(h)
	nrev, err := r.d.Store.Update(ctx, ApprovalsBucket, id, b, rev)
	if errors.Is(err, ErrStale) {
		return h, 0, fmt.Errorf("%w: %s was decided by someone else meanwhile", ErrDecided, id)
	}
	if err != nil {
		return h, 0, err
	}
	r.d.Log.Info("held action decided", zap.String("action", id), zap.String("state", state), zap.String("by", approver))
	return h, nrev, nil
}

func (r *Runner) expire(ctx context.Context, h Held, rev uint64) error {
	h.State, h.DecidedAt = "expired", r.d.Clock.Now()
	b, _ := json.Marshal(h)
	if _, err := r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev); err != nil && !errors.Is(err, ErrStale) {
		return err
	}
	j := r.heldJob(h)
	j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionExpired, h.DecidedAt, "approval window closed; nothing ran"
	if err := r.record(ctx, j, "expired", Event{Status: ledger.ActionExpired, Reason: j.ref.Detail}); err != nil {
		return err
	}
	if r.d.OnUpdate != nil {
		r.d.OnUpdate(ctx, h.Incident, h.Vendor, h.Credential, j.ref)
	}
	return nil
}

// ExpireHeld marks every pending held action past its window as expired (recorded) and
// returns how many it expired. The service calls it periodically.
func (r *Runner) ExpireHeld(ctx context.Context) (int, error) {
	keys, err := r.d.Store.Keys(ctx, ApprovalsBucket)
	if err != nil {
		return 0, err
	}
	n := 0
	now := r.d.Clock.Now()
	for _, k := range keys {
		var h Held
		rev, ok, err := getJSON(ctx, r.d.Store, ApprovalsBucket, k, &h)
		if err != nil || !ok || h.State != "pending" || now.Before(h.ExpiresAt) {
			continue
		}
		if err := r.expire(ctx, h, rev); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// HeldActions lists the held actions, pending or decided.
func (r *Runner) HeldActions(ctx context.Context) ([]Held, error) {
	keys, err := r.d.Store.Keys(ctx, ApprovalsBucket)
	if err != nil {
		return nil, err
	}
	out := make([]Held, 0, len(keys))
	for _, k := range keys {
		var h Held
		if _, ok, err := getJSON(ctx, r.d.Store, ApprovalsBucket, k, &h); err != nil {
			return nil, err
		} else if ok {
			h.Payload = nil
			out = append(out, h)
		}
	}
	return out, nil
}

func (r *Runner) heldJob(h Held) *job {
	j := &job{
		id: h.ID,
		target: Target{Incident: h.Incident, Vendor: h.Vendor, Credential: h.Credential, Action: h.Action, Payload: h.Payload,
			Fingerprint: r.d.Fingerprint},
		mode: playbooks.ModeEnforce, playbooks: h.Action.Playbooks,
	}
	j.ref = ledger.ActionRef{ID: h.ID, Type: string(h.Action.Type), Credential: h.Credential, Target: h.Target,
		Playbook: strings.Join(h.Action.Playbooks, ","), Mode: string(playbooks.ModeEnforce)}
	return j
}

// Status is the state of the global switches.
type Status struct {
	Mode    playbooks.Mode
	Paused  Switch
	Breaker Switch
}

// Status reads the global switches.
func (r *Runner) Status(ctx context.Context) (Status, error) {
	st := Status{Mode: playbooks.Mode(r.cfg.Mode)}
	if _, _, err := getJSON(ctx, r.d.Store, ControlBucket, pauseKey, &st.Paused); err != nil {
		return st, err
	}
	_, _, err := getJSON(ctx, r.d.Store, ControlBucket, breakerKey, &st.Breaker)
	return st, err
}

// Pause stops every destructive action fleet-wide (they are held) until Resume. It
// takes effect for the next decision of every instance.
func (r *Runner) Pause(ctx context.Context, who, reason string) error {
	return r.control(ctx, pauseKey, Switch{On: true, By: who, At: r.d.Clock.Now(), Reason: reason})
}

// Resume restarts automation.
func (r *Runner) Resume(ctx context.Context, who string) error {
	return r.control(ctx, pauseKey, Switch{On: false, By: who, At: r.d.Clock.Now()})
}

// ResetBreaker closes the budget's circuit breaker.
func (r *Runner) ResetBreaker(ctx context.Context, who string) error {
	return r.control(ctx, breakerKey, Switch{On: false, By: who, At: r.d.Clock.Now(), Reason: "reset"})
}

// control sets a switch and records it.
func (r *Runner) control(ctx context.Context, key string, s Switch) error {
	b, _ := json.Marshal(map[string]any{"switch": key, "on": s.On, "by": s.By, "reason": s.Reason})
	if _, err := r.d.Ledger.Append(ctx, ledger.Entry{
		Type: ledger.TypeControl, ID: key + "/" + strconv.FormatInt(s.At.UnixNano(), 10) + "/" + s.By,
		Time: s.At, Payload: b,
	}); err != nil {
		return err
	}
	r.d.Log.Warn("control switch", zap.String("switch", key), zap.Bool("on", s.On), zap.String("by", s.By))
	return r.setSwitch(ctx, key, s)
}

// Budget reports the revocation budget for the playbooks' input.
func (r *Runner) Budget(ctx context.Context) playbooks.Budget {
	b := playbooks.Budget{Limit: r.cfg.Budget, Remaining: r.cfg.Budget, Window: r.cfg.BudgetWindow.String()}
	var c counter
	window := r.d.Clock.Now().Truncate(r.cfg.BudgetWindow).Unix()
	if _, _, err := getJSON(ctx, r.d.Store, ControlBucket, "budget."+strconv.FormatInt(window, 10), &c); err == nil {
		b.Remaining = max(0, r.cfg.Budget-c.Used)
	}
	var br Switch
	if _, _, err := getJSON(ctx, r.d.Store, ControlBucket, breakerKey, &br); err == nil {
		b.BreakerOpen = br.On
	}
	return b
}
