package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// ErrDecided: the held action was already approved (and is running, being retried or
	// done), rejected, expired or superseded.
	ErrDecided = errors.New("already decided")
)

// HoldState is where a held action stands.
type HoldState string

// The hold states. Only a pending or failed hold can be decided.
const (
	// HoldPending: waiting for an approval until it expires.
	HoldPending HoldState = "pending"
	// HoldApproved: approved; the action is running, or failed retryably and is retried
	// (Approvals.Expire, on every tick) until it is done or its retry deadline passes.
	HoldApproved HoldState = "approved"
	// HoldDone: approved and run: verified, planned, or applied but unverified
	// (escalated).
	HoldDone HoldState = "done"
	// HoldFailed: approved, but the action failed permanently, could not run, or kept
	// failing until its retry deadline; it may be approved again within a new approval
	// window (after the cause is fixed), or rejected, and expires like a pending one.
	HoldFailed HoldState = "failed"
	// HoldRejected: rejected; nothing ran.
	HoldRejected HoldState = "rejected"
	// HoldExpired: nobody decided within the approval window; nothing ran.
	HoldExpired HoldState = "expired"
	// HoldSuperseded: a later decision of the incident, needing no approval, ran it.
	HoldSuperseded HoldState = "superseded"
	// HoldVetoWindow: announced in a decision's veto window; it runs at RunsAt unless a
	// human vetoes it (Approvals.Veto).
	HoldVetoWindow HoldState = "veto_window"
	// HoldVetoed: vetoed during its veto window; nothing ran.
	HoldVetoed HoldState = "vetoed"
	// HoldWindowEnded: its veto window ended without a veto; the action is running, or
	// failed retryably and is retried like an approved one until RetryUntil. No human
	// approved it: the pause switch and the breaker hold it for approval.
	HoldWindowEnded HoldState = "window_ended"
)

// actionStatus is the incident's view of an action held in state s.
func (s HoldState) actionStatus() incidents.ActionStatus {
	switch s {
	case HoldRejected:
		return incidents.ActionRejected
	case HoldExpired:
		return incidents.ActionExpired
	case HoldApproved, HoldDone, HoldSuperseded, HoldWindowEnded:
		return incidents.ActionApplied
	case HoldVetoWindow:
		return incidents.ActionAnnounced
	case HoldVetoed:
		return incidents.ActionVetoed
	case HoldFailed:
		return incidents.ActionFailed
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
	// ExpiresAt is the end of the approval window; for an action in a veto window, the
	// window's end (RunsAt).
	ExpiresAt time.Time `json:"expires_at"`
	// VetoWindow is the decision's veto window ("1m30s") and RunsAt its end, when the
	// action was announced in one.
	VetoWindow string    `json:"veto_window,omitempty"`
	RunsAt     time.Time `json:"runs_at,omitzero"`
	State      HoldState `json:"state"`
	// Approver is who decided: approved, rejected or vetoed it.
	Approver  string    `json:"approver,omitempty"`
	Comment   string    `json:"comment,omitempty"`
	DecidedAt time.Time `json:"decided_at,omitzero"`
	// Approvals counts the approvals (a failed action may be approved again).
	Approvals int `json:"approvals,omitempty"`
	// Attempts counts the runs under approval, and LastError is the last failure.
	Attempts  int    `json:"attempts,omitempty"`
	LastError string `json:"last_error,omitempty"`
	// RetryAt is when an approved action may run (again): while a run is under way it is
	// the end of that run's lease (a crashed run is taken over after it), and after a
	// retryable failure the runner's backoff.
	RetryAt time.Time `json:"retry_at,omitzero"`
	// RetryUntil is the deadline of an approved action: it is retried until then (one
	// approval window after the approval), then fails.
	RetryUntil time.Time `json:"retry_until,omitzero"`
	Payload    []byte    `json:"payload,omitempty"`
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
// caller to apply to the incident. The approved action skips the budget and the breaker
// (a human decided) but still takes its idempotency claim, waits while automation is
// paused, and a credential that meanwhile left the inventory or became protected is not
// touched. An action that fails retryably (Vault unavailable) stays approved and is
// retried with the runner's backoff on every later tick (Expire) and redelivery, until
// it is done or its retry deadline passes; Approve then answers without an error (the
// Update and the held action's record tell how it stands). An action that failed
// permanently may be approved again.
func (a *Approvals) Approve(ctx context.Context, id, approver, comment string) (Update, error) {
	r := a.r
	h, rev, expired, err := a.decide(ctx, id, approver, comment, HoldApproved)
	if err != nil {
		return expired, err
	}
	if err := r.record(ctx, a.job(h), "approved", Event{Status: incidents.ActionHeld, Approver: approver, Reason: comment}); err != nil {
		return Update{}, err // still approved: a later tick runs it once its lease passes
	}
	u, _, err := a.run(ctx, h, rev, r.s.Attempts)
	return u, err
}

// lease bounds one run of an approved action of attempts Apply attempts and
// Settings.Attempts Verify attempts (each with its deadline and backoff), and the wait
// for a stale claim: another instance takes over a run that has not finished by then
// (its instance crashed).
func (a *Approvals) lease(attempts int) time.Duration {
	s := a.r.s
	return time.Duration(attempts+s.Attempts)*(s.CallTimeout+BackoffMax) + s.ClaimStale
}

// run runs the approved action h (at revision rev, whose lease this instance holds)
// with at most attempts Apply attempts and settles its record: done, failed (it may be
// approved again), or still approved and due again after the runner's backoff. retrying
// reports the latter. The error is a failure to run it at all (no executor, no longer a
// target: permanent) or to keep the books; the action's own failure is in the Update.
func (a *Approvals) run(ctx context.Context, h Held, rev uint64, attempts int) (u Update, retrying bool, err error) {
	r := a.r
	j := a.job(h)
	j.attempts = attempts
	var exec Executor
	var notRun error
	if !r.s.PlanOnly {
		var ok bool
		if exec, ok = r.d.Executors[h.Action.Type]; !ok {
			notRun = killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("no executor for %s is configured", h.Action.Type))
		}
	}
	if notRun == nil {
		if cred, err := r.d.Inventory.Vendor(h.Vendor).Target(h.Credential, h.Action.Type); err != nil {
			notRun = killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("%s/%s is no longer a target: %w", h.Vendor, h.Credential, err))
		} else {
			j.target.Identity = cred
			j.ref.Target = r.describe(j.target)
		}
	}
	var runErr error
	var errs []error // the books
	if notRun != nil {
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionFailed, r.d.Clock.Now(), notRun.Error()
		errs = append(errs, r.record(ctx, j, "failed", Event{Status: incidents.ActionFailed, Error: j.ref.Detail,
			Approver: h.Approver, Cause: killswitch.ReasonOf(notRun)}))
	} else {
		j.ref, runErr = r.execute(ctx, j, exec, h.Approver, false)
	}
	// The books are kept even when the caller gives up (an approver's request cancelled).
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.s.CallTimeout)
	defer cancel()
	now := r.d.Clock.Now()
	h.Attempts++
	switch j.ref.Status {
	case incidents.ActionVerified, incidents.ActionPlanned, incidents.ActionUnverified:
		// Done (an unverified one is escalated); a failure to keep the books after it is
		// the caller's, and a later redelivery reconciles the claim through Verify.
		h.State, h.LastError = HoldDone, ""
		errs = append(errs, runErr)
		runErr = nil
	}
	switch {
	case h.State == HoldDone:
	case notRun != nil || killswitch.IsPermanent(runErr) || (runErr == nil && j.ref.Status == incidents.ActionFailed):
		why := j.ref.Detail
		if runErr != nil {
			why = runErr.Error()
		}
		h.State, h.LastError, h.ExpiresAt = HoldFailed, why, now.Add(r.s.ApprovalTTL)
		r.d.Log.Error("approved action failed; it may be approved again", zap.String("action", h.ID), zap.String("error", why))
	case runErr != nil && !now.Before(h.RetryUntil):
		h.State, h.LastError, h.ExpiresAt = HoldFailed, "retry deadline passed: "+runErr.Error(), now.Add(r.s.ApprovalTTL)
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionFailed, now, h.LastError
		errs = append(errs, r.record(bctx, j, "retry-deadline", Event{Status: incidents.ActionFailed, Error: h.LastError,
			Approver: h.Approver, Cause: killswitch.ReasonOf(runErr)}))
		r.d.Log.Error("approved action: retry deadline passed; it may be approved again", zap.String("action", h.ID), zap.Error(runErr))
	case runErr != nil: // retryable: stays approved, due again after the backoff
		retrying = true
		h.LastError, h.RetryAt = runErr.Error(), now.Add(r.backoff(h.Attempts))
		j.ref.Status, j.ref.At = incidents.ActionFailed, now
		j.ref.Detail = fmt.Sprintf("%s; attempt %d failed, retried until %s: %s", h.authority(), h.Attempts,
			h.RetryUntil.Format(time.RFC3339), runErr.Error())
		r.d.Log.Warn("approved action failed; retrying", zap.String("action", h.ID), zap.Int("attempts", h.Attempts),
			zap.String("cause", string(killswitch.ReasonOf(runErr))), zap.Error(runErr))
	case j.ref.Status == incidents.ActionHeld: // paused immediately before Apply: runs after the resume
		retrying = true
		h.LastError, h.RetryAt = j.ref.Detail, now
	default:
		h.State, h.LastError = HoldDone, ""
	}
	if h.State != HoldApproved {
		h.RetryAt = time.Time{}
	}
	errs = append(errs, a.settle(bctx, h, rev))
	if e := errors.Join(errs...); e != nil {
		r.d.Log.Error("approved action: bookkeeping failed", zap.String("action", h.ID), zap.Error(e))
	}
	return h.update(j.ref), retrying, errors.Join(append(errs, notRun)...)
}

// settle stores h, the outcome of a run of an approved action read at revision rev
// (compare-and-set: should another instance have changed it meanwhile, the outcome is
// stored over it only while it is still approved, or running after its veto window).
func (a *Approvals) settle(ctx context.Context, h Held, rev uint64) error {
	r := a.r
	for range 10 {
		b, err := json.Marshal(h)
		if err != nil {
			return killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		_, err = r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev)
		if !errors.Is(err, ErrStale) {
			if err != nil {
				return fmt.Errorf("actions: settle held action %s: %w", h.ID, err)
			}
			return nil
		}
		cur, crev, ok, err := a.get(ctx, h.ID)
		if err != nil || !ok || (cur.State != HoldApproved && cur.State != HoldWindowEnded) {
			return err
		}
		rev = crev
	}
	return killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: held action %s keeps changing", h.ID))
}

// take takes the lease of a run of the approved action h (at revision rev) for a run
// of attempts Apply attempts; ok is false when someone else took it first.
func (a *Approvals) take(ctx context.Context, h Held, rev uint64, attempts int) (Held, uint64, bool, error) {
	h.RetryAt = a.r.d.Clock.Now().Add(a.lease(attempts))
	b, err := json.Marshal(h)
	if err != nil {
		return h, 0, false, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	nrev, err := a.r.d.Store.Update(ctx, ApprovalsBucket, h.ID, b, rev)
	if errors.Is(err, ErrStale) {
		return h, 0, false, nil
	}
	return h, nrev, err == nil, err
}

// redeliver handles a decision whose action is approved (the detection redelivered, or
// a re-escalation of its incident): when the approved action is due (it failed
// retryably, or its run was abandoned) it runs now, under its approval; otherwise it
// reports how it stands.
func (a *Approvals) redeliver(ctx context.Context, h Held, rev uint64) (incidents.ActionRef, error) {
	r := a.r
	j := a.job(h)
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionHeld, h.DecidedAt, "approved by "+h.Approver+"; running"
	if r.d.Clock.Now().Before(h.RetryAt) {
		if h.LastError != "" {
			j.ref.Detail = "approved by " + h.Approver + "; retried at " + h.RetryAt.Format(time.RFC3339) + " after: " + h.LastError
		}
		return j.ref, nil
	}
	h, rev, ok, err := a.take(ctx, h, rev, r.s.Attempts)
	if err != nil || !ok {
		return j.ref, err
	}
	u, _, err := a.run(ctx, h, rev, r.s.Attempts)
	return u.Ref, err
}

// retryDue runs the approved actions (and those whose veto window ended) that are due,
// each with one Apply attempt (the next one after the runner's backoff, on a later
// tick), at most a few at once; those past their retry deadline fail instead. No
// approved action runs while automation is paused.
func (a *Approvals) retryDue(ctx context.Context, due []Held, revs []uint64) ([]Update, error) {
	r := a.r
	if _, hold, err := r.control.gate(ctx, true); err != nil {
		return nil, err
	} else if hold != "" {
		// Paused: approved actions wait for the resume; an action whose veto window
		// ended runs into the pause immediately before Apply and is held for approval.
		var keep []Held
		var keepRevs []uint64
		for i, h := range due {
			if h.State == HoldWindowEnded {
				keep, keepRevs = append(keep, h), append(keepRevs, revs[i])
			}
		}
		due, revs = keep, keepRevs
	}
	return a.each(ctx, due, revs, a.retryOne)
}

// each runs f on every held action of hs (at its revision in revs), at most a few at
// once, and returns the updates it made and its errors.
func (a *Approvals) each(ctx context.Context, hs []Held, revs []uint64, f func(context.Context, Held, uint64) (Update, error)) ([]Update, error) {
	var (
		mu      sync.Mutex
		updates []Update
		errs    []error
		wg      sync.WaitGroup
		slots   = make(chan struct{}, approvedRunsAtOnce)
	)
	for i, h := range hs {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			u, err := f(ctx, h, revs[i])
			mu.Lock()
			defer mu.Unlock()
			if u.Ref.ID != "" {
				updates = append(updates, u)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	return updates, errors.Join(errs...)
}

// approvedRunsAtOnce bounds the approved actions one tick runs at the same time.
const approvedRunsAtOnce = 4

// retryOne runs one due approved action once, or fails it when its deadline passed; the
// zero Update when another instance took it first.
func (a *Approvals) retryOne(ctx context.Context, h Held, rev uint64) (Update, error) {
	r := a.r
	now := r.d.Clock.Now()
	if !now.Before(h.RetryUntil) {
		j := a.job(h)
		h.State, h.ExpiresAt, h.RetryAt = HoldFailed, now.Add(r.s.ApprovalTTL), time.Time{}
		if h.LastError == "" {
			h.LastError = "retry deadline passed"
		} else {
			h.LastError = "retry deadline passed: " + h.LastError
		}
		if err := a.settle(ctx, h, rev); err != nil {
			return Update{}, err
		}
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionFailed, now, h.LastError
		return h.update(j.ref), r.record(ctx, j, "retry-deadline", Event{Status: incidents.ActionFailed, Error: h.LastError, Approver: h.Approver})
	}
	h, rev, ok, err := a.take(ctx, h, rev, 1)
	if err != nil || !ok {
		return Update{}, err
	}
	u, _, err := a.run(ctx, h, rev, 1)
	return u, err
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

// Expire does what the clock calls for, and returns the incidents' updates: every
// pending (or failed) held action past its approval window is marked expired
// (recorded); every action whose veto window ended without a veto runs (once fleet-wide:
// see endWindow); and every approved action that is due again (it failed retryably, or
// its run was abandoned) runs once more, unless automation is paused; one past its retry
// deadline fails. The pipeline calls it on every tick.
func (a *Approvals) Expire(ctx context.Context) ([]Update, error) {
	keys, err := a.r.d.Store.Keys(ctx, ApprovalsBucket)
	if err != nil {
		return nil, err
	}
	var updates []Update
	now := a.r.d.Clock.Now()
	var errs []error
	var due, ended []Held
	var revs, endedRevs []uint64
	for _, k := range keys {
		h, rev, ok, err := a.get(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		switch {
		case !ok:
		case (h.State == HoldApproved || h.State == HoldWindowEnded) && !now.Before(h.RetryAt):
			due, revs = append(due, h), append(revs, rev)
		case h.State == HoldVetoWindow && !now.Before(h.RunsAt):
			ended, endedRevs = append(ended, h), append(endedRevs, rev)
		case (h.State == HoldPending || h.State == HoldFailed) && !now.Before(h.ExpiresAt):
			u, err := a.expire(ctx, h, rev)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if u.Ref.ID != "" {
				updates = append(updates, u)
			}
		}
	}
	if len(ended) > 0 {
		us, err := a.each(ctx, ended, endedRevs, a.endWindow)
		updates = append(updates, us...)
		errs = append(errs, err)
	}
	if len(due) > 0 {
		us, err := a.retryDue(ctx, due, revs)
		updates = append(updates, us...)
		errs = append(errs, err)
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

// reopen holds j for approval again because guard held it immediately before Apply
// (the caller records it): a new pending hold, or one that reopens a decided hold
// (superseded, failed…) with a new approval window. A pending or approved hold is left
// as it is.
func (a *Approvals) reopen(ctx context.Context, j *job, guard, reason string) error {
	r := a.r
	for range 10 {
		now := r.d.Clock.Now()
		h, rev, ok, err := a.get(ctx, j.id)
		if err != nil {
			return err
		}
		if ok && (h.State == HoldPending || h.State == HoldApproved) {
			return nil
		}
		n := Held{
			ID: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor, Credential: j.target.Credential,
			Action: j.target.Action, Target: j.ref.Target, Guard: guard, Reason: reason,
			HeldAt: now, ExpiresAt: now.Add(r.s.ApprovalTTL), State: HoldPending, Payload: j.target.Payload,
			Approvals: h.Approvals, Attempts: h.Attempts, LastError: h.LastError,
		}
		b, err := json.Marshal(n)
		if err != nil {
			return killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		if ok {
			_, err = r.d.Store.Update(ctx, ApprovalsBucket, j.id, b, rev)
		} else {
			_, err = r.d.Store.Create(ctx, ApprovalsBucket, j.id, b)
		}
		if errors.Is(err, ErrStale) || errors.Is(err, ErrExists) {
			continue
		}
		return err
	}
	return killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: held action %s keeps changing", j.id))
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

// decide moves a pending (or failed) held action to state, once (compare-and-set). A held action
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
	open := h.State == HoldPending || h.State == HoldFailed
	if open && !now.Before(h.ExpiresAt) {
		u, err := a.expire(ctx, h, rev)
		if err != nil {
			return h, 0, Update{}, err
		}
		return h, 0, u, fmt.Errorf("%w: %s expired at %s; nothing ran", ErrExpired, id, h.ExpiresAt.Format(time.RFC3339))
	}
	if !open {
		if h.State == HoldVetoWindow {
			return h, 0, Update{}, fmt.Errorf("%w: %s is in a veto window: it runs at %s unless vetoed (POST /api/actions/%s/veto)",
				ErrDecided, id, h.RunsAt.UTC().Format(time.RFC3339), id)
		}
		return h, 0, Update{}, fmt.Errorf("%w: %s is %s", ErrDecided, id, h.State)
	}
	h.State, h.Approver, h.Comment, h.DecidedAt = state, approver, comment, now
	if state == HoldApproved {
		// The approving instance runs it now; should it crash, the lease passes and
		// another takes it over.
		h.Approvals++
		h.RetryAt, h.RetryUntil = now.Add(a.lease(r.s.Attempts)), now.Add(r.s.ApprovalTTL)
	}
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

// authority says on whose word an approved (or window-ended) action runs.
func (h Held) authority() string {
	if h.State == HoldWindowEnded {
		return "its veto window ended without a veto"
	}
	return "approved by " + h.Approver
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
		mode: killswitch.ModeEnforce, playbooks: h.Action.Playbooks, approval: h.Approvals,
	}
	j.ref = incidents.ActionRef{ID: h.ID, Type: h.Action.Type, Credential: h.Credential, Target: h.Target,
		Playbook: strings.Join(h.Action.Playbooks, ","), Mode: killswitch.ModeEnforce}
	return j
}
