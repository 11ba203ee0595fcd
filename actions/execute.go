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

// ClaimState is where an action's idempotency claim stands.
type ClaimState string

// The claim states.
const (
	// ClaimClaimed: an instance took the claim and is about to apply.
	ClaimClaimed ClaimState = "claimed"
	// ClaimApplied: Apply succeeded; Verify has not proven it yet.
	ClaimApplied ClaimState = "applied"
	// ClaimVerified: done and proven; nobody applies it again.
	ClaimVerified ClaimState = "verified"
	// ClaimPlanned: planned without a Vault (replay); nobody plans it again.
	ClaimPlanned ClaimState = "planned"
	// ClaimFailed: the last attempt failed; the next one takes the claim over.
	ClaimFailed ClaimState = "failed"
	// ClaimHeld: the pause switch or the breaker held the action immediately before
	// Apply; the next attempt (an approval, or a decision the guards let through) takes
	// the claim over.
	ClaimHeld ClaimState = "held"
)

// Claim is the idempotency claim of one action (ClaimsBucket, keyed by action ID).
type Claim struct {
	State    ClaimState `json:"state"`
	Instance string     `json:"instance"`
	At       time.Time  `json:"at"`
	Error    string     `json:"error,omitempty"`
	// Round counts the attempts that took the claim (1 for the first): the ledger records
	// of later rounds carry it in their IDs, so that none is lost to de-duplication.
	Round int `json:"round,omitempty"`
}

// Retry pacing: the first retry after about BackoffBase, doubling, capped at BackoffMax,
// with jitter.
const (
	BackoffBase = 100 * time.Millisecond
	BackoffMax  = 5 * time.Second
	claimPoll   = 50 * time.Millisecond
)

func (r *Runner) claimBytes(state ClaimState, round int, errText string) []byte {
	b, _ := json.Marshal(Claim{State: state, Instance: r.d.Instance, At: r.d.Clock.Now(), Error: errText, Round: round}) // a Claim always encodes
	return b
}

// claim takes the idempotency claim of j. took reports that this instance now owns it;
// prior is the claim found (zero for a fresh claim). When took is false, prior is
// finished (verified or planned) by someone else. Taking the claim sets j.round.
func (r *Runner) claim(ctx context.Context, j *job) (rev uint64, prior Claim, took bool, err error) {
	polls := int(r.s.ClaimStale/claimPoll) + 1
	for i := 0; ; i++ {
		rev, err := r.d.Store.Create(ctx, ClaimsBucket, j.id, r.claimBytes(ClaimClaimed, 1, ""))
		if err == nil {
			j.round = 1
			return rev, Claim{}, true, nil
		}
		if !errors.Is(err, ErrExists) {
			return 0, Claim{}, false, err
		}
		var cur Claim
		crev, ok, err := getJSON(ctx, r.d.Store, ClaimsBucket, j.id, &cur)
		if err != nil {
			return 0, Claim{}, false, err
		}
		if !ok {
			continue
		}
		switch {
		case cur.State == ClaimVerified || cur.State == ClaimPlanned:
			return crev, cur, false, nil
		case (cur.State == ClaimClaimed || cur.State == ClaimApplied) && cur.Instance != r.d.Instance &&
			r.d.Clock.Now().Sub(cur.At) < r.s.ClaimStale && i < polls:
			// Another instance is at work (applying or verifying): wait for it to finish,
			// or to go stale.
			if err := r.d.Sleep(ctx, claimPoll); err != nil {
				return 0, Claim{}, false, err
			}
			continue
		}
		// Failed, held, our own, or abandoned by a crashed instance: take it over.
		round := max(cur.Round, 1) + 1
		nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, r.claimBytes(ClaimClaimed, round, ""), crev)
		if errors.Is(err, ErrStale) {
			continue
		}
		if err != nil {
			return 0, Claim{}, false, err
		}
		j.round = round
		return nrev, cur, true, nil
	}
}

// setClaim moves our claim to a new state.
func (r *Runner) setClaim(ctx context.Context, j *job, rev uint64, state ClaimState, errText string) (uint64, error) {
	nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, r.claimBytes(state, j.round, errText), rev)
	if err != nil {
		return rev, fmt.Errorf("actions: claim %s → %s: %w", j.id, state, err)
	}
	return nrev, nil
}

// execute claims, records the intent, applies with retries and verifies. fresh says
// that the claims bucket held no claim for j a moment ago: the claim and the intent are
// then written together (one storage round instead of two); should another instance
// take the claim first after all, the intent is followed by a record that this instance
// yielded. The bookkeeping after Apply (the applied record, the claim, the cooldown)
// runs while Verify looks, and the verified time is taken before the last records are
// written: the exposure window is not lengthened by them.
func (r *Runner) execute(ctx context.Context, j *job, exec Executor, approver string, fresh bool) (incidents.ActionRef, error) {
	destructive := j.target.Action.Type.Destructive()
	intentEvent := Event{Status: incidents.ActionApplied, Reason: "about to apply", Approver: approver}
	var intent func() error
	if fresh && exec != nil {
		intent = r.queue(ctx, j, "intent", intentEvent)
	}
	rev, prior, took, err := r.claim(ctx, j)
	if err != nil || !took {
		if intent != nil {
			// The intent was queued with the claim: say why nothing follows it.
			why := "the claim could not be taken"
			if err == nil {
				why = "another instance holds the claim (" + prior.Instance + ")"
			}
			err = errors.Join(err, intent(), r.record(ctx, j, "yielded", Event{Status: incidents.ActionHeld, Reason: why}))
		}
		if err != nil {
			return j.ref, err
		}
		status := incidents.ActionVerified
		if prior.State == ClaimPlanned {
			status = incidents.ActionPlanned
		}
		j.ref.Status, j.ref.At, j.ref.Detail = status, prior.At, "already done (claim held by "+prior.Instance+")"
		return j.ref, nil
	}
	if exec == nil { // plan only
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionPlanned, r.d.Clock.Now(), "planned, not applied (no Vault)"
		if err := r.record(ctx, j, "planned", Event{Status: incidents.ActionPlanned, Reason: j.ref.Detail, Approver: approver}); err != nil {
			return j.ref, err
		}
		if destructive {
			if err := r.control.stampCooldown(ctx, j.target.Vendor, j.target.Credential, j.target.Incident); err != nil {
				return j.ref, err
			}
		}
		_, err := r.setClaim(ctx, j, rev, ClaimPlanned, "")
		return j.ref, err
	}
	// A claim left applied, or abandoned mid-way by a crashed instance: the credential may
	// already be dead. Reconcile through Verify before applying anything.
	if prior.State == ClaimApplied || (prior.State == ClaimClaimed && prior.Instance != r.d.Instance) {
		if v, err := r.verifyOnce(ctx, exec, j); err == nil && v.Dead {
			if intent != nil {
				if err := intent(); err != nil {
					return j.ref, err
				}
			}
			return r.verified(ctx, j, rev, v, "reconciled: already dead")
		}
	}
	if intent == nil {
		intent = r.queue(ctx, j, "intent", intentEvent)
	}
	if err := intent(); err != nil {
		// No intent in the ledger, no apply (G9); free the claim for a later attempt.
		if _, cerr := r.setClaim(ctx, j, rev, ClaimFailed, err.Error()); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return j.ref, err
	}
	var out Outcome
	err = r.retry(ctx, j, "apply", func(cctx context.Context) error {
		// The pause switch and the breaker are checked again immediately before every
		// destructive Apply: the guards ran before the claim, perhaps long ago (a redelivered or
		// reconciled claim skips them), and a retry may come after a backoff.
		if destructive {
			guard, hold, err := r.control.gate(cctx, approver != "")
			if err != nil {
				return fmt.Errorf("check the pause switch and the breaker: %w", err)
			}
			if hold != "" {
				return &heldError{guard: guard, reason: hold}
			}
		}
		var err error
		out, err = exec.Apply(cctx, j.target)
		return err
	})
	if he := (*heldError)(nil); errors.As(err, &he) {
		return r.holdBeforeApply(ctx, j, rev, he.guard, he.reason, approver)
	}
	if err != nil {
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionFailed, r.d.Clock.Now(), err.Error()
		rerr := r.record(ctx, j, "failed", Event{Status: incidents.ActionFailed, Error: err.Error(),
			Retryable: killswitch.IsRetryable(err), Cause: killswitch.ReasonOf(err)})
		_, cerr := r.setClaim(ctx, j, rev, ClaimFailed, err.Error())
		r.d.Log.Error("action failed", zap.String("action", j.id), zap.String("type", string(j.target.Action.Type)),
			zap.Bool("retryable", killswitch.IsRetryable(err)), zap.String("cause", string(killswitch.ReasonOf(err))), zap.Error(err))
		if killswitch.IsRetryable(err) {
			return j.ref, errors.Join(err, rerr, cerr) // handled again later
		}
		return j.ref, errors.Join(rerr, cerr)
	}
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionApplied, r.d.Clock.Now(), out.Detail
	// The bookkeeping of the apply does not gate the proof: it runs while Verify looks.
	appliedRecord := r.queue(ctx, j, "applied", Event{Status: incidents.ActionApplied, Outcome: &out, Approver: approver})
	bookkeeping := make(chan error, 1)
	go func() {
		bookkeeping <- concurrently(
			func() (err error) { rev, err = r.setClaim(ctx, j, rev, ClaimApplied, ""); return err },
			func() error {
				if !destructive {
					return nil
				}
				return r.control.stampCooldown(ctx, j.target.Vendor, j.target.Credential, j.target.Incident)
			},
		)
	}()
	var v Verification
	verr := r.retry(ctx, j, "verify", func(cctx context.Context) error {
		var err error
		if v, err = exec.Verify(cctx, j.target); err == nil && !v.Dead {
			return killswitch.Retryable(killswitch.ReasonUnknown, fmt.Errorf("not dead yet: %s", v.Evidence))
		}
		return err
	})
	verifiedAt := r.d.Clock.Now()
	if err := errors.Join(<-bookkeeping, appliedRecord()); err != nil {
		return j.ref, err
	}
	if verr != nil || !v.Dead {
		// V2: applied but not proven dead: escalate.
		reason := "verification failed"
		if verr != nil {
			reason += ": " + verr.Error()
		}
		j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionUnverified, r.d.Clock.Now(), reason
		r.d.Log.Error("action applied but not verified: a human must check", zap.String("action", j.id), zap.String("reason", reason))
		return j.ref, r.record(ctx, j, "unverified", Event{Status: incidents.ActionUnverified, Reason: reason, Proof: &v})
	}
	j.ref.At = verifiedAt
	return r.verified(ctx, j, rev, v, "")
}

// verified records the proof and finishes the claim. The verification time is j.ref.At
// when set (taken as Verify returned), else now.
func (r *Runner) verified(ctx context.Context, j *job, rev uint64, v Verification, note string) (incidents.ActionRef, error) {
	at := j.ref.At
	if j.ref.Status != incidents.ActionApplied || at.IsZero() {
		at = r.d.Clock.Now()
	}
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionVerified, at, v.Evidence
	record := r.queue(ctx, j, "verified", Event{Status: incidents.ActionVerified, Proof: &v, Reason: note})
	_, cerr := r.setClaim(ctx, j, rev, ClaimVerified, "")
	return j.ref, errors.Join(record(), cerr)
}

// heldError is what an attempt returns when the pause switch or the breaker holds the
// action immediately before Apply: no attempt is made, and none is recorded as failed.
type heldError struct{ guard, reason string }

func (e *heldError) Error() string { return "held by " + e.guard + ": " + e.reason }

// holdBeforeApply holds j, whose claim (at rev) this instance took, because guard saw a
// reason to hold it immediately before Apply. The claim is left held (the next attempt
// takes it over), the hold is recorded in the ledger, and nothing is dropped: an action
// of a decision is held for approval like any other (its budget units are given back:
// it did not run), an approved one stays approved and is run again by
// Approvals.Expire once the pause is lifted.
func (r *Runner) holdBeforeApply(ctx context.Context, j *job, rev uint64, guard, reason, approver string) (incidents.ActionRef, error) {
	_, err := r.setClaim(ctx, j, rev, ClaimHeld, reason)
	errs := []error{err}
	if approver == "" {
		errs = append(errs, r.refund(ctx, j), r.approvals.reopen(ctx, j, guard, reason))
	}
	j.ref.Status, j.ref.At, j.ref.Detail = incidents.ActionHeld, r.d.Clock.Now(), reason
	errs = append(errs, r.record(ctx, j, "held-before-apply", Event{Status: incidents.ActionHeld, Guard: guard, Reason: reason, Approver: approver}))
	r.d.Log.Warn("action held immediately before apply", zap.String("action", j.id), zap.String("guard", guard),
		zap.Bool("approved", approver != ""), zap.String("reason", reason))
	return j.ref, errors.Join(errs...)
}

// refund gives back the budget units j holds (the consumers of the guard chain).
func (r *Runner) refund(ctx context.Context, j *job) error {
	c := Check{Now: r.d.Clock.Now(), Action: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor, Credential: j.target.Credential}
	var errs []error
	for _, g := range r.guards {
		if cons, ok := g.(Consumer); ok {
			if err := cons.Refund(ctx, c); err != nil {
				errs = append(errs, fmt.Errorf("actions: refund %s: %w", g.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

func (r *Runner) verifyOnce(ctx context.Context, exec Executor, j *job) (Verification, error) {
	cctx, cancel := context.WithTimeout(ctx, r.s.CallTimeout)
	defer cancel()
	return exec.Verify(cctx, j.target)
}

// retry calls f with a deadline per attempt, retrying failures not marked permanent
// with capped, jittered exponential backoff, at most Settings.Attempts times (Apply: or
// the job's own bound); every failed attempt is recorded. A hold (heldError) returns at once.
func (r *Runner) retry(ctx context.Context, j *job, stage string, f func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, r.s.CallTimeout)
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return killswitch.Retryable(killswitch.ReasonCanceled, fmt.Errorf("%s: %w", stage, ctx.Err()))
		}
		if he := (*heldError)(nil); errors.As(err, &he) {
			return err
		}
		retryable := killswitch.IsRetryable(err)
		if rerr := r.record(ctx, j, fmt.Sprintf("%s-attempt-%d", stage, attempt), Event{
			Status: incidents.ActionFailed, Attempt: attempt, Error: err.Error(), Retryable: retryable, Cause: killswitch.ReasonOf(err),
		}); rerr != nil {
			return errors.Join(err, rerr)
		}
		limit := r.s.Attempts
		if stage == "apply" {
			limit = j.maxAttempts(limit)
		}
		if !retryable || attempt >= limit {
			return err
		}
		if err := r.d.Sleep(ctx, r.backoff(attempt)); err != nil {
			return killswitch.Retryable(killswitch.ReasonCanceled, err)
		}
	}
}

func (r *Runner) backoff(attempt int) time.Duration {
	d := BackoffBase << (attempt - 1)
	if d > BackoffMax || d <= 0 {
		d = BackoffMax
	}
	r.mu.Lock()
	f := 0.5 + 0.5*r.rnd.Float64()
	r.mu.Unlock()
	return time.Duration(float64(d) * f)
}
