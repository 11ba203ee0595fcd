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
)

// Claim is the idempotency claim of one action (ClaimsBucket, keyed by action ID).
type Claim struct {
	State    ClaimState `json:"state"`
	Instance string     `json:"instance"`
	At       time.Time  `json:"at"`
	Error    string     `json:"error,omitempty"`
}

// Retry pacing: the first retry after about BackoffBase, doubling, capped at BackoffMax,
// with jitter.
const (
	BackoffBase = 100 * time.Millisecond
	BackoffMax  = 5 * time.Second
	claimPoll   = 50 * time.Millisecond
)

func (r *Runner) claimBytes(state ClaimState, errText string) []byte {
	b, _ := json.Marshal(Claim{State: state, Instance: r.d.Instance, At: r.d.Clock.Now(), Error: errText}) // a Claim always encodes
	return b
}

// claim takes the idempotency claim of j. took reports that this instance now owns it;
// prior is the claim found (zero for a fresh claim). When took is false, prior is
// finished (verified or planned) by someone else.
func (r *Runner) claim(ctx context.Context, j *job) (rev uint64, prior Claim, took bool, err error) {
	polls := int(r.s.ClaimStale/claimPoll) + 1
	for i := 0; ; i++ {
		rev, err := r.d.Store.Create(ctx, ClaimsBucket, j.id, r.claimBytes(ClaimClaimed, ""))
		if err == nil {
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
		// Failed, our own, or abandoned by a crashed instance: take it over.
		nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, r.claimBytes(ClaimClaimed, ""), crev)
		if errors.Is(err, ErrStale) {
			continue
		}
		if err != nil {
			return 0, Claim{}, false, err
		}
		return nrev, cur, true, nil
	}
}

// setClaim moves our claim to a new state.
func (r *Runner) setClaim(ctx context.Context, j *job, rev uint64, state ClaimState, errText string) (uint64, error) {
	nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, r.claimBytes(state, errText), rev)
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
		var err error
		out, err = exec.Apply(cctx, j.target)
		return err
	})
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

func (r *Runner) verifyOnce(ctx context.Context, exec Executor, j *job) (Verification, error) {
	cctx, cancel := context.WithTimeout(ctx, r.s.CallTimeout)
	defer cancel()
	return exec.Verify(cctx, j.target)
}

// retry calls f with a deadline per attempt, retrying failures not marked permanent
// with capped, jittered exponential backoff, at most Settings.Attempts times; every
// failed attempt is recorded.
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
		retryable := killswitch.IsRetryable(err)
		if rerr := r.record(ctx, j, fmt.Sprintf("%s-attempt-%d", stage, attempt), Event{
			Status: incidents.ActionFailed, Attempt: attempt, Error: err.Error(), Retryable: retryable, Cause: killswitch.ReasonOf(err),
		}); rerr != nil {
			return errors.Join(err, rerr)
		}
		if !retryable || attempt >= r.s.Attempts {
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
