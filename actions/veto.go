package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"go.uber.org/zap"
)

// Veto windows: a decision that carries one ("veto_window": "90s") does not run its
// destructive actions at once. Each action that the guard chain lets through (its budget
// units taken) is announced — in the ledger, on the notify subject, in the incident and in
// the approvals bucket, state HoldVetoWindow — and runs when the window ends unless
// someone vetoes it. The approvals bucket is shared by every instance and survives a
// restart: whichever instance's tick first sees the window end takes it (compare-and-set
// to HoldWindowEnded) and runs it under the action's idempotency claim, so it runs once.
// Pause and the breaker still hold it: at the window's end, and again immediately before
// Apply, either one turns it into a held action waiting for an approval.

// Notifier tells humans about an action announced in a veto window (the service
// publishes on killswitch.notify.<vendor>, where notify actions and pages go).
type Notifier interface {
	// Page publishes v, as JSON, for the people responsible for vendor.
	Page(ctx context.Context, vendor string, v any) error
}

// VetoGuard names veto windows in held actions, ledger records and logs.
const VetoGuard = "veto_window"

// Announcement is what the Notifier publishes when an action is announced in a veto
// window.
type Announcement struct {
	// Kind is always "veto_window".
	Kind       string                `json:"kind"`
	Action     string                `json:"action"`
	Incident   string                `json:"incident"`
	Vendor     string                `json:"vendor"`
	Credential string                `json:"credential,omitempty"`
	Type       killswitch.ActionType `json:"type"`
	Target     string                `json:"target"`
	Window     string                `json:"veto_window"`
	RunsAt     time.Time             `json:"runs_at"`
	Reason     string                `json:"reason"`
	// Message says it in one sentence for a human, with the command that vetoes it.
	Message string `json:"message"`
}

// announce records j's action in a veto window of length window instead of running it
// now: prev (at revision rev, when exists) is a pending or failed hold this decision
// supersedes. When another instance, or a redelivery, announced or decided it first, the
// action's state is reported as it stands.
func (a *Approvals) announce(ctx context.Context, j *job, window time.Duration, reason string, prev Held, rev uint64, exists bool) (incidents.ActionRef, error) {
	r := a.r
	now := r.d.Clock.Now()
	runsAt := now.Add(window)
	h := Held{
		ID: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor, Credential: j.target.Credential,
		Action: j.target.Action, Target: j.ref.Target, Guard: VetoGuard, Reason: reason,
		HeldAt: now, ExpiresAt: runsAt, VetoWindow: window.String(), RunsAt: runsAt, State: HoldVetoWindow,
		Payload: j.target.Payload, Approvals: prev.Approvals, Attempts: prev.Attempts,
	}
	b, err := json.Marshal(h)
	if err != nil {
		return j.ref, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	detail := fmt.Sprintf("runs at %s unless vetoed (veto window %s)", runsAt.UTC().Format(time.RFC3339), window)
	// The announcement is in the ledger before anything waits on it.
	if err := r.record(ctx, j, "veto-window", Event{Status: incidents.ActionAnnounced, Guard: VetoGuard,
		Reason: detail + ": " + reason}); err != nil {
		return j.ref, err
	}
	if exists {
		_, err = r.d.Store.Update(ctx, ApprovalsBucket, j.id, b, rev)
	} else {
		_, err = r.d.Store.Create(ctx, ApprovalsBucket, j.id, b)
	}
	if errors.Is(err, ErrExists) || errors.Is(err, ErrStale) {
		cur, _, ok, gerr := a.get(ctx, j.id)
		if gerr != nil || !ok {
			return j.ref, errors.Join(gerr, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: held action %s changed meanwhile", j.id)))
		}
		return cur.ref(a.job(cur).ref), nil
	}
	if err != nil {
		return j.ref, fmt.Errorf("actions: announce %s: %w", j.id, err)
	}
	ref := h.ref(j.ref)
	r.d.Log.Warn("destructive action announced: it runs when its veto window ends unless vetoed", zap.String("action", j.id),
		zap.String("vendor", h.Vendor), zap.String("credential", h.Credential), zap.Time("runs_at", runsAt))
	if r.d.Notifier != nil {
		msg := fmt.Sprintf("Killswitch will run %s on %s at %s (in %s) unless vetoed: killswitch veto %s",
			h.Action.Type, h.Target, runsAt.UTC().Format(time.RFC3339), window, h.ID)
		if err := r.d.Notifier.Page(ctx, h.Vendor, Announcement{Kind: VetoGuard, Action: h.ID, Incident: h.Incident, Vendor: h.Vendor,
			Credential: h.Credential, Type: h.Action.Type, Target: h.Target, Window: h.VetoWindow, RunsAt: runsAt, Reason: reason,
			Message: msg}); err != nil {
			// The ledger, the events, the incident and the API still show it.
			r.d.Log.Error("veto window not announced on the notify subject", zap.String("action", h.ID), zap.Error(err))
		}
	}
	return ref, nil
}

// ref is the incident's view of h, based on the job's ref base.
func (h Held) ref(base incidents.ActionRef) incidents.ActionRef {
	base.Status, base.At, base.Detail = h.State.actionStatus(), h.HeldAt, h.Reason
	switch h.State {
	case HoldVetoWindow:
		runsAt := h.RunsAt
		base.RunsAt = &runsAt
		base.Detail = fmt.Sprintf("runs at %s unless vetoed (veto window %s)", h.RunsAt.UTC().Format(time.RFC3339), h.VetoWindow)
	case HoldVetoed:
		base.At, base.Detail = h.DecidedAt, "vetoed by "+h.Approver+"; nothing ran"
	}
	return base
}

// Veto cancels an action announced in a veto window, once, before its window ends and
// it starts: nothing runs, the budget units it took are given back, and the veto is
// recorded in the ledger with who vetoed it (the authenticated user) and the comment. An
// action that is not in a veto window is ErrDecided (a held action is rejected, not
// vetoed; one whose window ended already runs), an unknown one ErrUnknownAction. The
// returned Update is for the caller to apply to the incident.
func (a *Approvals) Veto(ctx context.Context, id, who, comment string) (Update, error) {
	r := a.r
	h, rev, ok, err := a.get(ctx, id)
	if err != nil {
		return Update{}, err
	}
	if !ok {
		return Update{}, fmt.Errorf("%w: %s", ErrUnknownAction, id)
	}
	switch h.State {
	case HoldVetoWindow:
	case HoldPending, HoldFailed:
		return Update{}, fmt.Errorf("%w: %s is not in a veto window: it waits for an approval; reject it instead", ErrDecided, id)
	case HoldVetoed:
		return Update{}, fmt.Errorf("%w: %s was already vetoed by %s", ErrDecided, id, h.Approver)
	case HoldWindowEnded, HoldDone:
		return Update{}, fmt.Errorf("%w: %s: its veto window ended at %s and it ran (or is running)", ErrDecided, id, h.RunsAt.UTC().Format(time.RFC3339))
	default:
		return Update{}, fmt.Errorf("%w: %s is %s, not in a veto window", ErrDecided, id, h.State)
	}
	now := r.d.Clock.Now()
	h.State, h.Approver, h.Comment, h.DecidedAt = HoldVetoed, who, comment, now
	b, err := json.Marshal(h)
	if err != nil {
		return Update{}, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if _, err := r.d.Store.Update(ctx, ApprovalsBucket, id, b, rev); errors.Is(err, ErrStale) {
		return Update{}, fmt.Errorf("%w: %s changed meanwhile (its window ended, or someone else vetoed it)", ErrDecided, id)
	} else if err != nil {
		return Update{}, err
	}
	j := a.job(h)
	r.d.Log.Warn("action vetoed", zap.String("action", id), zap.String("incident", h.Incident), zap.String("by", who))
	errs := []error{r.record(ctx, j, "vetoed", Event{Status: incidents.ActionVetoed, Guard: VetoGuard, Approver: who, Reason: comment})}
	if err := r.refund(ctx, j); err != nil {
		// The veto stands; the units age out of the window.
		r.d.Log.Error("vetoed action: budget units not given back", zap.String("action", id), zap.Error(err))
	}
	return h.update(h.ref(j.ref)), errors.Join(errs...)
}

// endWindow runs an action whose veto window ended (h, read at revision rev), unless
// another instance took it first (the zero Update). While automation is paused or the
// breaker is open it is held for an approval instead; otherwise it moves to
// HoldWindowEnded (compare-and-set: one instance wins) and runs like an approved action,
// under its idempotency claim, with the pause and the breaker checked again before Apply.
func (a *Approvals) endWindow(ctx context.Context, h Held, rev uint64) (Update, error) {
	r := a.r
	now := r.d.Clock.Now()
	j := a.job(h)
	guard, hold, err := r.control.gate(ctx, false)
	if err != nil {
		return Update{}, err
	}
	if hold != "" {
		n := h
		n.State, n.Guard, n.Reason, n.HeldAt, n.ExpiresAt = HoldPending, guard, "the veto window ended while "+hold, now, now.Add(r.s.ApprovalTTL)
		b, err := json.Marshal(n)
		if err != nil {
			return Update{}, killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		if _, err := r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev); errors.Is(err, ErrStale) {
			return Update{}, nil // vetoed, or taken by another instance
		} else if err != nil {
			return Update{}, err
		}
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionHeld, now, n.Reason
		errs := []error{r.refund(ctx, j), r.record(ctx, j, "window-held", Event{Status: incidents.ActionHeld, Guard: guard, Reason: n.Reason})}
		r.d.Log.Warn("veto window ended while held: the action waits for an approval", zap.String("action", h.ID), zap.String("guard", guard))
		return h.update(j.ref), errors.Join(errs...)
	}
	h.State, h.DecidedAt, h.RetryUntil = HoldWindowEnded, now, now.Add(r.s.ApprovalTTL)
	h, rev, ok, err := a.take(ctx, h, rev, r.s.Attempts)
	if err != nil || !ok {
		return Update{}, err
	}
	r.d.Log.Info("veto window ended without a veto: running", zap.String("action", h.ID), zap.Time("runs_at", h.RunsAt))
	if err := r.record(ctx, j, "window-ended", Event{Status: incidents.ActionApplied, Guard: VetoGuard,
		Reason: "the veto window of " + h.VetoWindow + " ended without a veto"}); err != nil {
		return Update{}, err // still window_ended: a later tick runs it once its lease passes
	}
	u, _, err := a.run(ctx, h, rev, r.s.Attempts)
	return u, err
}
