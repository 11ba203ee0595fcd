package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/killswitch-dev/killswitch/ledger"
	"go.uber.org/zap"
)

// Claim is the idempotency claim of one action (ClaimsBucket, keyed by action ID).
type Claim struct {
	// State is claimed, applied, verified, planned or failed.
	State    string    `json:"state"`
	Instance string    `json:"instance"`
	At       time.Time `json:"at"`
	Error    string    `json:"error,omitempty"`
}

// Retry pacing: the first retry after about BackoffBase, doubling, capped at BackoffMax,
// with jitter.
const (
	BackoffBase = 100 * time.Millisecond
	BackoffMax  = 5 * time.Second
	claimPoll   = 50 * time.Millisecond
)

// claim takes the idempotency claim of j. took reports that this instance now owns it;
// prior is the claim found (zero for a fresh claim). When took is false, prior is
// finished (verified or planned) by someone else.
func (r *Runner) claim(ctx context.Context, j *job) (rev uint64, prior Claim, took bool, err error) {
	mine := func() []byte {
		b, _ := json.Marshal(Claim{State: "claimed", Instance: r.d.Instance, At: r.d.Clock.Now()})
		return b
	}
	polls := int(r.cfg.ClaimStale/claimPoll) + 1
	for i := 0; ; i++ {
		rev, err := r.d.Store.Create(ctx, ClaimsBucket, j.id, mine())
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
		case cur.State == "verified" || cur.State == "planned":
			return crev, cur, false, nil
		case (cur.State == "claimed" || cur.State == "applied") && cur.Instance != r.d.Instance &&
			r.d.Clock.Now().Sub(cur.At) < r.cfg.ClaimStale && i < polls:
			// Another instance is at work (applying or verifying): wait for it to finish,
			// or to go stale.
			if err := r.d.Sleep(ctx, claimPoll); err != nil {
				return 0, Claim{}, false, err
			}
			continue
		}
		// Failed, our own, or abandoned by a crashed instance: take it over.
		nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, mine(), crev)
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
func (r *Runner) setClaim(ctx context.Context, j *job, rev uint64, state, errText string) (uint64, error) {
	b, _ := json.Marshal(Claim{State: state, Instance: r.d.Instance, At: r.d.Clock.Now(), Error: errText})
	nrev, err := r.d.Store.Update(ctx, ClaimsBucket, j.id, b, rev)
	if err != nil {
		return rev, fmt.Errorf("actions: claim %s → %s: %w", j.id, state, err)
	}
	return nrev, nil
}

// execute claims, records the intent, applies with retries and verifies.
func (r *Runner) execute(ctx context.Context, j *job, exec Executor, approver string) (ledger.ActionRef, error) {
	rev, prior, took, err := r.claim(ctx, j)
	if err != nil {
		return j.ref, err
	}
	if !took {
		status := ledger.ActionVerified
		if prior.State == "planned" {
			status = ledger.ActionPlanned
		}
		j.ref.Status, j.ref.At, j.ref.Detail = status, prior.At, "already done (claim held by "+prior.Instance+")"
		return j.ref, nil
	}
	destructive := j.target.Action.Type.Destructive()
	if exec == nil { // plan only
		j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionPlanned, r.d.Clock.Now(), "planned, not applied (no Vault)"
		if err := r.record(ctx, j, "planned", Event{Status: ledger.ActionPlanned, Reason: j.ref.Detail, Approver: approver}); err != nil {
			return j.ref, err
		}
		if destructive {
			if err := r.stampCooldown(ctx, j); err != nil {
				return j.ref, err
			}
		}
		_, err := r.setClaim(ctx, j, rev, "planned", "")
		return j.ref, err
	}
	// A claim left applied, or abandoned mid-way by a crashed instance: the credential may
	// already be dead. Reconcile through Verify before applying anything.
	if prior.State == "applied" || (prior.State == "claimed" && prior.Instance != r.d.Instance) {
		if v, err := r.verifyOnce(ctx, exec, j); err == nil && v.Dead {
			return r.verified(ctx, j, rev, v, "reconciled: already dead")
		}
	}
	if err := r.record(ctx, j, "intent", Event{Status: ledger.ActionApplied, Reason: "about to apply", Approver: approver}); err != nil {
		// No intent in the ledger, no apply (G9); free the claim for a later attempt.
		_, _ = r.setClaim(ctx, j, rev, "failed", err.Error())
		return j.ref, err
	}
	var out Outcome
	err = r.retry(ctx, j, "apply", func(cctx context.Context) error {
		var err error
		out, err = exec.Apply(cctx, j.target)
		return err
	})
	if err != nil {
		j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionFailed, r.d.Clock.Now(), err.Error()
		rerr := r.record(ctx, j, "failed", Event{Status: ledger.ActionFailed, Error: err.Error(), Retryable: IsRetryable(err)})
		_, cerr := r.setClaim(ctx, j, rev, "failed", err.Error())
		r.d.Log.Error("action failed", zap.String("action", j.id), zap.String("type", string(j.target.Action.Type)),
			zap.Bool("retryable", IsRetryable(err)), zap.Error(err))
		if IsRetryable(err) {
			return j.ref, errors.Join(err, rerr, cerr) // handled again later
		}
		return j.ref, errors.Join(rerr, cerr)
	}
	j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionApplied, r.d.Clock.Now(), out.Detail
	if err := r.record(ctx, j, "applied", Event{Status: ledger.ActionApplied, Outcome: &out, Approver: approver}); err != nil {
		return j.ref, err
	}
	if rev, err = r.setClaim(ctx, j, rev, "applied", ""); err != nil {
		return j.ref, err
	}
	if destructive {
		if err := r.stampCooldown(ctx, j); err != nil {
			return j.ref, err
		}
	}
	var v Verification
	err = r.retry(ctx, j, "verify", func(cctx context.Context) error {
		var err error
		if v, err = exec.Verify(cctx, j.target); err == nil && !v.Dead {
			return Retryable(fmt.Errorf("not dead yet: %s", v.Evidence))
		}
		return err
	})
	if err != nil || !v.Dead {
		// V2: applied but not proven dead: escalate.
		reason := "verification failed"
		if err != nil {
			reason += ": " + err.Error()
		}
		j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionUnverified, r.d.Clock.Now(), reason
		r.d.Log.Error("action applied but not verified: a human must check", zap.String("action", j.id), zap.String("reason", reason))
		return j.ref, r.record(ctx, j, "unverified", Event{Status: ledger.ActionUnverified, Reason: reason, Proof: &v})
	}
	return r.verified(ctx, j, rev, v, "")
}

func (r *Runner) verified(ctx context.Context, j *job, rev uint64, v Verification, note string) (ledger.ActionRef, error) {
	j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionVerified, r.d.Clock.Now(), v.Evidence
	if err := r.record(ctx, j, "verified", Event{Status: ledger.ActionVerified, Proof: &v, Reason: note}); err != nil {
		return j.ref, err
	}
	_, err := r.setClaim(ctx, j, rev, "verified", "")
	return j.ref, err
}

func (r *Runner) stampCooldown(ctx context.Context, j *job) error {
	return putJSON(ctx, r.d.Store, ControlBucket, cooldownKey(j.target.Vendor, j.target.Credential),
		Switch{On: true, By: j.target.Incident, At: r.d.Clock.Now()})
}

func (r *Runner) verifyOnce(ctx context.Context, exec Executor, j *job) (Verification, error) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	return exec.Verify(cctx, j.target)
}

// retry calls f with a deadline per attempt, retrying retryable errors with capped,
// jittered exponential backoff; every failed attempt is recorded.
func (r *Runner) retry(ctx context.Context, j *job, stage string, f func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return Retryable(fmt.Errorf("%s: %w", stage, ctx.Err()))
		}
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrPermanent) {
			err = Retryable(err) // the call's own deadline: try again
		}
		retry := IsRetryable(err) && attempt < r.cfg.Attempts
		if rerr := r.record(ctx, j, fmt.Sprintf("%s-attempt-%d", stage, attempt), Event{
			Status: ledger.ActionFailed, Attempt: attempt, Error: err.Error(), Retryable: IsRetryable(err),
		}); rerr != nil {
			return errors.Join(err, rerr)
		}
		if !retry {
			return err
		}
		if err := r.d.Sleep(ctx, r.backoff(attempt)); err != nil {
			return Retryable(err)
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
