package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Control keys in ControlBucket.
const (
	pauseKey   = "pause"
	breakerKey = "breaker"
)

// Switch is the state of the pause switch or the breaker.
type Switch struct {
	On     bool      `json:"on"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// counter is a budget counter for one window.
type counter struct {
	Used int `json:"used"`
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
	// State is pending, approved, rejected, expired or done.
	State     string    `json:"state"`
	Approver  string    `json:"approver,omitempty"`
	Comment   string    `json:"comment,omitempty"`
	DecidedAt time.Time `json:"decided_at,omitzero"`
	Payload   []byte    `json:"payload,omitempty"`
}

// getJSON reads a JSON value; ok is false when the key does not exist.
func getJSON(ctx context.Context, s Store, bucket, key string, v any) (rev uint64, ok bool, err error) {
	b, rev, err := s.Get(ctx, bucket, key)
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return 0, false, Permanent(fmt.Errorf("actions: %s/%s holds bad JSON: %w", bucket, key, err))
	}
	return rev, true, nil
}

// putJSON stores a JSON value whatever its current revision (last writer wins).
func putJSON(ctx context.Context, s Store, bucket, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	for range 10 {
		_, rev, err := s.Get(ctx, bucket, key)
		switch {
		case errors.Is(err, ErrNotFound):
			_, err = s.Create(ctx, bucket, key, b)
		case err == nil:
			_, err = s.Update(ctx, bucket, key, b, rev)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrStale) {
			continue
		}
		return err
	}
	return Retryable(fmt.Errorf("actions: %s/%s keeps changing under us", bucket, key))
}

// guards runs the guard rails for a destructive action; it returns the guard that
// holds it (and why), or "" to let it run. The budget is consumed only when nothing
// else holds the action.
func (r *Runner) guards(ctx context.Context, req Request, j *job) (guard, reason string, err error) {
	var pause Switch
	if _, _, err := getJSON(ctx, r.d.Store, ControlBucket, pauseKey, &pause); err != nil {
		return "", "", err
	}
	if pause.On {
		return "paused", fmt.Sprintf("automation paused by %s: %s", pause.By, pause.Reason), nil
	}
	if req.Result.Decision.RequiresApproval {
		return "approval", "the playbooks require approval: " + req.Result.Decision.Reason, nil
	}
	now := r.d.Clock.Now()
	var cool Switch
	ckey := cooldownKey(j.target.Vendor, j.target.Credential)
	if _, ok, err := getJSON(ctx, r.d.Store, ControlBucket, ckey, &cool); err != nil {
		return "", "", err
	} else if ok && cool.By != j.target.Incident && now.Sub(cool.At) < r.cfg.Cooldown {
		return "cooldown", fmt.Sprintf("%s/%s was acted on by incident %s %s ago (cooldown %s)",
			j.target.Vendor, j.target.Credential, cool.By, now.Sub(cool.At).Round(time.Second), r.cfg.Cooldown), nil
	}
	var br Switch
	if _, _, err := getJSON(ctx, r.d.Store, ControlBucket, breakerKey, &br); err != nil {
		return "", "", err
	}
	if br.On {
		return "breaker", "the revocation budget's circuit breaker is open (approval-only mode): " + br.Reason, nil
	}
	window := now.Truncate(r.cfg.BudgetWindow).Unix()
	vkey := "vendor-budget." + hashKey(j.target.Vendor) + "." + strconv.FormatInt(window, 10)
	if ok, err := r.consume(ctx, vkey, r.cfg.VendorBudget); err != nil {
		return "", "", err
	} else if !ok {
		return "blast_radius", fmt.Sprintf("vendor %s reached %d destructive actions in this %s window", j.target.Vendor, r.cfg.VendorBudget, r.cfg.BudgetWindow), nil
	}
	if ok, err := r.consume(ctx, "budget."+strconv.FormatInt(window, 10), r.cfg.Budget); err != nil {
		return "", "", err
	} else if !ok {
		reason := fmt.Sprintf("the fleet-wide budget of %d destructive actions per %s is spent", r.cfg.Budget, r.cfg.BudgetWindow)
		if err := r.setSwitch(ctx, breakerKey, Switch{On: true, By: "budget", At: now, Reason: reason}); err != nil {
			return "", "", err
		}
		r.d.Log.Error("revocation budget spent: breaker open, approval-only mode", zap.Int("budget", r.cfg.Budget))
		return "breaker", reason + "; the circuit breaker opened (approval-only mode)", nil
	}
	return "", "", nil
}

// consume takes one unit of a counter with compare-and-set; false when it is spent.
func (r *Runner) consume(ctx context.Context, key string, limit int) (bool, error) {
	for range 20 {
		var c counter
		rev, ok, err := getJSON(ctx, r.d.Store, ControlBucket, key, &c)
		if err != nil {
			return false, err
		}
		if c.Used >= limit {
			return false, nil
		}
		b, _ := json.Marshal(counter{Used: c.Used + 1})
		if ok {
			_, err = r.d.Store.Update(ctx, ControlBucket, key, b, rev)
		} else {
			_, err = r.d.Store.Create(ctx, ControlBucket, key, b)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrStale) {
			continue // another instance counted first
		}
		return err == nil, err
	}
	return false, Retryable(fmt.Errorf("actions: budget counter %s is contended", key))
}

func (r *Runner) setSwitch(ctx context.Context, key string, s Switch) error {
	return putJSON(ctx, r.d.Store, ControlBucket, key, s)
}

func cooldownKey(vendor, cred string) string { return "cooldown." + hashKey(vendor+"\x00"+cred) }

func hashKey(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:10])
}

// hold records a held action and its approval record.
func (r *Runner) hold(ctx context.Context, j *job, guard, reason string) (ledger.ActionRef, error) {
	now := r.d.Clock.Now()
	h := Held{
		ID: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor, Credential: j.target.Credential,
		Action: j.target.Action, Target: j.ref.Target, Guard: guard, Reason: reason,
		HeldAt: now, ExpiresAt: now.Add(r.cfg.ApprovalTTL), State: "pending", Payload: j.target.Payload,
	}
	b, _ := json.Marshal(h)
	if _, err := r.d.Store.Create(ctx, ApprovalsBucket, j.id, b); err != nil && !errors.Is(err, ErrExists) {
		return j.ref, err
	}
	j.ref.Status, j.ref.At, j.ref.Detail = ledger.ActionHeld, now, reason
	r.d.Log.Warn("action held for approval", zap.String("action", j.id), zap.String("guard", guard), zap.String("reason", reason))
	return j.ref, r.record(ctx, j, "held", Event{Status: ledger.ActionHeld, Guard: guard, Reason: reason})
}

// existing reports the state of an action already decided for this incident: a claim
// (then it is reconciled: finished if unfinished) or a held record. done is false when
// there is neither.
func (r *Runner) existing(ctx context.Context, req Request, j *job) (ledger.ActionRef, bool, error) {
	var c Claim
	if _, ok, err := getJSON(ctx, r.d.Store, ClaimsBucket, j.id, &c); err != nil {
		return j.ref, true, err
	} else if ok {
		ref, err := r.execute(ctx, j, r.d.Executors[j.target.Action.Type], "")
		return ref, true, err
	}
	var h Held
	if _, ok, err := getJSON(ctx, r.d.Store, ApprovalsBucket, j.id, &h); err != nil {
		return j.ref, true, err
	} else if ok && (h.State != "pending" || req.Result.Decision.RequiresApproval) {
		j.ref.Status, j.ref.At, j.ref.Detail = heldStatus(h), h.HeldAt, h.Reason
		return j.ref, true, nil
	}
	// Nothing yet, or a pending hold that a later decision (needing no approval) may
	// supersede if the guards let it through.
	return j.ref, false, nil
}

// supersede closes a pending hold of j because a later decision runs the action.
func (r *Runner) supersede(ctx context.Context, j *job, decision string) error {
	var h Held
	rev, ok, err := getJSON(ctx, r.d.Store, ApprovalsBucket, j.id, &h)
	if err != nil || !ok || h.State != "pending" {
		return err
	}
	h.State, h.DecidedAt, h.Approver = "superseded", r.d.Clock.Now(), "decision "+decision
	b, _ := json.Marshal(h)
	if _, err := r.d.Store.Update(ctx, ApprovalsBucket, j.id, b, rev); err != nil {
		if errors.Is(err, ErrStale) {
			return fmt.Errorf("%w: %s was decided meanwhile", ErrDecided, j.id)
		}
		return err
	}
	return r.record(ctx, j, "superseded", Event{Status: ledger.ActionHeld, Reason: "the hold is superseded by decision " + decision})
}

func heldStatus(h Held) ledger.ActionStatus {
	switch h.State {
	case "rejected":
		return ledger.ActionRejected
	case "expired":
		return ledger.ActionExpired
	case "approved", "done", "superseded":
		return ledger.ActionApplied
	}
	return ledger.ActionHeld
}
