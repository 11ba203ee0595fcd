package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Errors of the approval API.
var (
	// ErrUnknownAction: no held action with that ID.
	ErrUnknownAction = errors.New("no held action with this id")
	// ErrExpired: the approval window closed; nothing ran.
	ErrExpired = errors.New("approval window closed")
	// ErrDecided: the held action was already approved, rejected or expired.
	ErrDecided = errors.New("already decided")
)

// HoldState is where a held action stands.
type HoldState string

// The hold states. Only a pending hold can be decided.
const (
	// HoldPending: waiting for an approval until it expires.
	HoldPending HoldState = "pending"
	// HoldApproved: approved; the action is running.
	HoldApproved HoldState = "approved"
	// HoldDone: approved and run (whatever the outcome).
	HoldDone HoldState = "done"
	// HoldRejected: rejected; nothing ran.
	HoldRejected HoldState = "rejected"
	// HoldExpired: nobody decided within the approval window; nothing ran.
	HoldExpired HoldState = "expired"
	// HoldSuperseded: a later decision of the incident, needing no approval, ran it.
	HoldSuperseded HoldState = "superseded"
)

// actionStatus is the incident's view of an action held in state s.
func (s HoldState) actionStatus() incidents.ActionStatus {
	switch s {
	case HoldRejected:
		return incidents.ActionRejected
	case HoldExpired:
		return incidents.ActionExpired
	case HoldApproved, HoldDone, HoldSuperseded:
		return incidents.ActionApplied
	}
	return incidents.ActionHeld
}

// Update is a later change of one of an incident's actions — a held action approved and
// run, rejected, or expired — for the caller to apply to the incident (actions never
// change incidents themselves: data flows one way).
type Update struct {
	Incident, Vendor, Credential string
	Ref                          incidents.ActionRef
}

// Held is a held action waiting for an approval.
type Held struct {
	ID         string           `json:"id"`
	Incident   string           `json:"incident"`
	Vendor     string           `json:"vendor"`
	Credential string           `json:"credential,omitempty"`
	Action     playbooks.Action `json:"action"`
	Target     string           `json:"target"`
	Guard      string           `json:"guard"`
	Reason     string           `json:"reason"`
	HeldAt     time.Time        `json:"held_at"`
	ExpiresAt  time.Time        `json:"expires_at"`
	State      HoldState        `json:"state"`
	Approver   string           `json:"approver,omitempty"`
	Comment    string           `json:"comment,omitempty"`
	DecidedAt  time.Time        `json:"decided_at,omitzero"`
	Payload    []byte           `json:"payload,omitempty"`
}

// Approvals are the held actions: each waits for an approval bound to it (approver,
// time, comment) and runs exactly once when approved; a rejected or expired one never
// runs. It is safe for concurrent use, and held actions are shared by every instance
// through the Store.
type Approvals struct {
	r *Runner
}

// Approve runs a held action, once: the approval is bound to that one action, with the
// approver and the time. An expired approval window runs nothing (ErrExpired). The
// returned Update (set also with ErrExpired, and when the action failed) is for the
// caller to apply to the incident. The
// approved action skips the budget and the breaker (a human decided) but still takes
// its idempotency claim, and a credential that meanwhile left the inventory or became
// protected is not touched.
func (a *Approvals) Approve(ctx context.Context, id, approver, comment string) (Update, error) {
	r := a.r
	h, rev, expired, err := a.decide(ctx, id, approver, comment, HoldApproved)
	if err != nil {
		return expired, err
	}
	j := a.job(h)
	var exec Executor
	if !r.s.PlanOnly {
		var ok bool
		if exec, ok = r.d.Executors[h.Action.Type]; !ok {
			return a.done(ctx, h, rev, j, killswitch.Permanent(killswitch.ReasonMisconfigured,
				fmt.Errorf("no executor for %s is configured", h.Action.Type)))
		}
	}
	cred, err := r.d.Inventory.Vendor(h.Vendor).Target(h.Credential, h.Action.Type)
	if err != nil {
		return a.done(ctx, h, rev, j, killswitch.Permanent(killswitch.ReasonMisconfigured,
			fmt.Errorf("%s/%s is no longer a target: %w", h.Vendor, h.Credential, err)))
	}
	j.target.Identity = cred
	j.ref.Target = r.describe(j.target)
	if err := r.record(ctx, j, "approved", Event{Status: incidents.ActionHeld, Approver: approver, Reason: comment}); err != nil {
		return Update{}, err
	}
	ref, err := r.execute(ctx, j, exec, approver, false)
	j.ref = ref
	return a.done(ctx, h, rev, j, err)
}

// done closes an approved hold (whatever its outcome) and returns the incident's update.
// When the action did not run, err says why and is recorded as its failure.
func (a *Approvals) done(ctx context.Context, h Held, rev uint64, j *job, err error) (Update, error) {
	r := a.r
	var errs []error
	if j.ref.Status == "" && err != nil {
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionFailed, r.d.Clock.Now(), err.Error()
		errs = append(errs, r.record(ctx, j, "failed", Event{Status: incidents.ActionFailed, Error: j.ref.Detail, Cause: killswitch.ReasonOf(err)}))
	}
	h.State = HoldDone
	if b, merr := json.Marshal(h); merr != nil {
		errs = append(errs, merr)
	} else if _, uerr := r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev); uerr != nil {
		errs = append(errs, fmt.Errorf("actions: close held action %s: %w", h.ID, uerr))
	}
	if e := errors.Join(errs...); e != nil {
		r.d.Log.Error("approved action: bookkeeping failed", zap.String("action", h.ID), zap.Error(e))
	}
	return h.update(j.ref), errors.Join(append(errs, err)...)
}

// Reject drops a held action; nothing runs. The returned Update (set also with
// ErrExpired) is for the caller to apply to the incident.
func (a *Approvals) Reject(ctx context.Context, id, approver, comment string) (Update, error) {
	r := a.r
	h, _, expired, err := a.decide(ctx, id, approver, comment, HoldRejected)
	if err != nil {
		return expired, err
	}
	j := a.job(h)
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionRejected, r.d.Clock.Now(), "rejected by "+approver
	if err := r.record(ctx, j, "rejected", Event{Status: incidents.ActionRejected, Approver: approver, Reason: comment}); err != nil {
		return Update{}, err
	}
	return h.update(j.ref), nil
}

// Expire marks every pending held action past its window as expired (recorded) and
// returns the incidents' updates. The pipeline calls it on every tick.
func (a *Approvals) Expire(ctx context.Context) ([]Update, error) {
	keys, err := a.r.d.Store.Keys(ctx, ApprovalsBucket)
	if err != nil {
		return nil, err
	}
	var updates []Update
	now := a.r.d.Clock.Now()
	var errs []error
	for _, k := range keys {
		h, rev, ok, err := a.get(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok || h.State != HoldPending || now.Before(h.ExpiresAt) {
			continue
		}
		u, err := a.expire(ctx, h, rev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if u.Ref.ID != "" {
			updates = append(updates, u)
		}
	}
	return updates, errors.Join(errs...)
}

// List returns the held actions, pending or decided, without their payloads.
func (a *Approvals) List(ctx context.Context) ([]Held, error) {
	keys, err := a.r.d.Store.Keys(ctx, ApprovalsBucket)
	if err != nil {
		return nil, err
	}
	out := make([]Held, 0, len(keys))
	for _, k := range keys {
		h, _, ok, err := a.get(ctx, k)
		if err != nil {
			return nil, err
		}
		if ok {
			h.Payload = nil
			out = append(out, h)
		}
	}
	return out, nil
}

// get reads a held action; ok is false when there is none.
func (a *Approvals) get(ctx context.Context, id string) (Held, uint64, bool, error) {
	var h Held
	rev, ok, err := getJSON(ctx, a.r.d.Store, ApprovalsBucket, id, &h)
	return h, rev, ok, err
}

// hold records a held action and its approval record.
func (a *Approvals) hold(ctx context.Context, j *job, guard, reason string) (incidents.ActionRef, error) {
	r := a.r
	now := r.d.Clock.Now()
	h := Held{
		ID: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor, Credential: j.target.Credential,
		Action: j.target.Action, Target: j.ref.Target, Guard: guard, Reason: reason,
		HeldAt: now, ExpiresAt: now.Add(r.s.ApprovalTTL), State: HoldPending, Payload: j.target.Payload,
	}
	b, err := json.Marshal(h)
	if err != nil {
		return j.ref, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if _, err := r.d.Store.Create(ctx, ApprovalsBucket, j.id, b); err != nil && !errors.Is(err, ErrExists) {
		return j.ref, err
	}
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionHeld, now, reason
	r.d.Log.Warn("action held for approval", zap.String("action", j.id), zap.String("guard", guard), zap.String("reason", reason))
	return j.ref, r.record(ctx, j, "held", Event{Status: incidents.ActionHeld, Guard: guard, Reason: reason})
}

// supersede closes the pending hold h (at revision rev) of j because a later decision
// runs the action.
func (a *Approvals) supersede(ctx context.Context, j *job, h Held, rev uint64, decision string) error {
	r := a.r
	h.State, h.DecidedAt, h.Approver = HoldSuperseded, r.d.Clock.Now(), "decision "+decision
	b, err := json.Marshal(h)
	if err != nil {
		return killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if _, err := r.d.Store.Update(ctx, ApprovalsBucket, j.id, b, rev); err != nil {
		if errors.Is(err, ErrStale) {
			return fmt.Errorf("%w: %s was decided meanwhile", ErrDecided, j.id)
		}
		return err
	}
	return r.record(ctx, j, "superseded", Event{Status: incidents.ActionHeld, Reason: "the hold is superseded by decision " + decision})
}

// decide moves a pending held action to state, once (compare-and-set). A held action
// past its expiry is marked expired instead: ErrExpired is returned with the incident's
// update.
func (a *Approvals) decide(ctx context.Context, id, approver, comment string, state HoldState) (Held, uint64, Update, error) {
	r := a.r
	h, rev, ok, err := a.get(ctx, id)
	if err != nil {
		return h, 0, Update{}, err
	}
	if !ok {
		return h, 0, Update{}, fmt.Errorf("%w: %s", ErrUnknownAction, id)
	}
	now := r.d.Clock.Now()
	if h.State == HoldPending && !now.Before(h.ExpiresAt) {
		u, err := a.expire(ctx, h, rev)
		if err != nil {
			return h, 0, Update{}, err
		}
		return h, 0, u, fmt.Errorf("%w: %s expired at %s; nothing ran", ErrExpired, id, h.ExpiresAt.Format(time.RFC3339))
	}
	if h.State != HoldPending {
		return h, 0, Update{}, fmt.Errorf("%w: %s is %s", ErrDecided, id, h.State)
	}
	h.State, h.Approver, h.Comment, h.DecidedAt = state, approver, comment, now
	b, err := json.Marshal(h)
	if err != nil {
		return h, 0, Update{}, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	nrev, err := r.d.Store.Update(ctx, ApprovalsBucket, id, b, rev)
	if errors.Is(err, ErrStale) {
		return h, 0, Update{}, fmt.Errorf("%w: %s was decided by someone else meanwhile", ErrDecided, id)
	}
	if err != nil {
		return h, 0, Update{}, err
	}
	r.d.Log.Info("held action decided", zap.String("action", id), zap.String("state", string(state)), zap.String("by", approver))
	return h, nrev, Update{}, nil
}

// expire marks a pending hold expired and records it; the zero Update when another
// instance decided it meanwhile.
func (a *Approvals) expire(ctx context.Context, h Held, rev uint64) (Update, error) {
	r := a.r
	h.State, h.DecidedAt = HoldExpired, r.d.Clock.Now()
	b, err := json.Marshal(h)
	if err != nil {
		return Update{}, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if _, err := r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev); err != nil {
		if errors.Is(err, ErrStale) {
			return Update{}, nil // decided meanwhile (approved, rejected or expired elsewhere)
		}
		return Update{}, err
	}
	j := a.job(h)
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionExpired, h.DecidedAt, "approval window closed; nothing ran"
	if err := r.record(ctx, j, "expired", Event{Status: incidents.ActionExpired, Reason: j.ref.Detail}); err != nil {
		return Update{}, err
	}
	return h.update(j.ref), nil
}

// update is the incident's update for a change of h.
func (h Held) update(ref incidents.ActionRef) Update {
	return Update{Incident: h.Incident, Vendor: h.Vendor, Credential: h.Credential, Ref: ref}
}

// job rebuilds the job of a held action.
func (a *Approvals) job(h Held) *job {
	j := &job{
		id: h.ID,
		target: Target{Incident: h.Incident, Vendor: h.Vendor, Credential: h.Credential, Action: h.Action, Payload: h.Payload,
			Fingerprint: a.r.d.Fingerprint},
		mode: killswitch.ModeEnforce, playbooks: h.Action.Playbooks,
	}
	j.ref = incidents.ActionRef{ID: h.ID, Type: h.Action.Type, Credential: h.Credential, Target: h.Target,
		Playbook: strings.Join(h.Action.Playbooks, ","), Mode: killswitch.ModeEnforce}
	return j
}
