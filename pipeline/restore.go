package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"go.uber.org/zap"
)

// Restore restores incident id after a false positive, as user by: it reverses what
// can be reversed (re-enables the entity, restores quarantined policies), re-issues
// what cannot (a new AppRole secret-id per role, a new KV version — each handed over
// response-wrapped, in the returned Restoration only), says plainly what stays dead
// (revoked tokens and leases), records every step in the ledger linked to the incident,
// marks the incident a false positive with its time-to-restore, and holds the same
// pattern on the same key for approval for Settings.HoldAfterRestore. A restore that
// left steps failed may be run again: the steps that succeeded are not repeated.
func (k *Killer) Restore(ctx context.Context, id, by, reason string) (Restoration, error) {
	if k.cfg.Reviver == nil {
		return Restoration{}, ErrNoReviver
	}
	in, err := k.cfg.Incidents.Incident(ctx, id)
	if err != nil {
		return Restoration{}, fmt.Errorf("restore %s: %w", id, err)
	}
	if in == nil {
		return Restoration{}, fmt.Errorf("restore %q: %w", id, ErrNoOrder)
	}
	if in.Restore != nil && in.Restore.Complete {
		return Restoration{}, fmt.Errorf("%w: incident %s was restored by %s at %s", ErrOrderState, id, in.Restore.By,
			in.Restore.RestoredAt.Format(time.RFC3339))
	}
	var ord *KillOrder
	if in.Kill != nil {
		o, _, err := k.Get(ctx, in.Kill.Order)
		if err != nil {
			return Restoration{}, err
		}
		ord = &o
	}
	now := k.cfg.Clock.Now()
	note := incidents.RestoreNote{By: by, Reason: reason, RequestedAt: now}
	done := map[string]incidents.RestoreStep{} // succeeded in an earlier run
	if in.Restore != nil {
		for _, s := range in.Restore.Steps {
			if s.Outcome != incidents.RestoreFailed {
				done[s.Credential] = s
			}
		}
	}
	out := Restoration{Incident: in.ID, Vendor: in.Vendor, Wrapped: map[string]WrappedItem{}}
	reissued := map[string]string{} // AppRole mount/role → the credential whose step re-issued it
	for _, a := range taken(in) {
		if s, ok := done[a.Credential]; ok {
			note.Steps = append(note.Steps, s)
			continue
		}
		step := incidents.RestoreStep{Credential: a.Credential, Type: a.Type}
		c, ok := k.identity(in, ord, a.Credential)
		switch {
		case !ok:
			step.Outcome, step.Error = incidents.RestoreFailed, "the credential is no longer known (not in the inventory, not in the kill order)"
		case a.Type == killswitch.ActionRevokeTokenAccessor || a.Type == killswitch.ActionRevokeLease || a.Type == killswitch.ActionRevokeLeasePrefix:
			step.Outcome = incidents.RestoreStaysDead
			step.Evidence = "revoked tokens and leases cannot be brought back: the vendor obtains new ones the usual way (log in, request credentials)"
		case a.Type == killswitch.ActionDestroySecretID && reissued[roleKey(c)] != "":
			step.Outcome = incidents.RestoreReissued
			step.Evidence = "covered by the new secret-id of role " + c.Role + " (see " + reissued[roleKey(c)] + ")"
		default:
			rv, err := k.cfg.Reviver.Revive(ctx, in.ID, c, a.Type, k.cfg.Settings.WrapTTL)
			if err != nil {
				step.Outcome, step.Error = incidents.RestoreFailed, err.Error()
				break
			}
			step.Outcome, step.Evidence = rv.Outcome, rv.Evidence
			if rv.WrapToken != "" {
				step.WrapAccessorFP = k.cfg.Runner.Fingerprint().Of(rv.WrapAccessor)
				step.WrapExpiresAt = rv.WrapExpiresAt
				out.Wrapped[a.Credential] = WrappedItem{Token: rv.WrapToken, ExpiresAt: rv.WrapExpiresAt}
			}
			if a.Type == killswitch.ActionDestroySecretID {
				reissued[roleKey(c)] = a.Credential
			}
		}
		step.At = k.cfg.Clock.Now()
		note.Steps = append(note.Steps, step)
		if err := k.recordStep(ctx, in, step, by); err != nil {
			return out, err
		}
	}
	if len(note.Steps) == 0 {
		return out, fmt.Errorf("restore %s: %w", id, ErrNothingToRestore)
	}
	note.Complete = !slices.ContainsFunc(note.Steps, func(s incidents.RestoreStep) bool { return s.Outcome == incidents.RestoreFailed })
	note.RestoredAt = k.cfg.Clock.Now()
	note.TookSeconds = note.RestoredAt.Sub(now).Seconds()
	if in.ContainedAt != nil {
		note.TimeToRestoreSeconds = note.RestoredAt.Sub(*in.ContainedAt).Seconds()
	}
	out.Note = note
	if err := k.r.restored(ctx, in, note); err != nil {
		return out, err
	}
	if note.Complete {
		if err := k.holdPattern(ctx, in, by); err != nil {
			return out, err
		}
		if m := k.cfg.Metrics; m != nil {
			m.TimeToRestore.Observe(note.TimeToRestoreSeconds)
		}
	}
	if ord != nil {
		ord.Restore = &note
		if note.Complete {
			ord.State = KillRestored
		}
		if err := k.save(ctx, *ord); err != nil {
			return out, err
		}
	}
	k.cfg.Log.Warn("incident restored as a false positive", zap.String("incident", in.ID), zap.String("vendor", in.Vendor),
		zap.String("by", by), zap.Bool("complete", note.Complete), zap.Float64("time_to_restore_seconds", note.TimeToRestoreSeconds))
	return out, nil
}

// taken returns the destructive actions of in that took something away (or may
// have), one per credential, in credential order.
func taken(in *incidents.Incident) []incidents.ActionRef {
	var out []incidents.ActionRef
	for _, a := range in.Actions {
		if !a.Type.Destructive() {
			continue
		}
		switch a.Status {
		case incidents.ActionVerified, incidents.ActionApplied, incidents.ActionUnverified:
		default:
			continue
		}
		if !slices.ContainsFunc(out, func(x incidents.ActionRef) bool { return x.Credential == a.Credential }) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b incidents.ActionRef) int { return strings.Compare(a.Credential, b.Credential) })
	return out
}

// identity is what restore knows of credential name: the kill order's record, else the
// inventory's.
func (k *Killer) identity(in *incidents.Incident, ord *KillOrder, name string) (killswitch.Credential, bool) {
	if ord != nil {
		if c, ok := ord.Restorable[name]; ok {
			return c, true
		}
	}
	if v := k.cfg.Inventory.Vendor(in.Vendor); v != nil {
		if c, ok := v.Credentials[name]; ok {
			return c, true
		}
	}
	return killswitch.Credential{}, false
}

func roleKey(c killswitch.Credential) string { return c.Mount + "/" + c.Role }

// restoreEvent is the ledger payload of one restore step (no wrapping token).
type restoreEvent struct {
	Incident string `json:"incident"`
	Vendor   string `json:"vendor"`
	By       string `json:"by"`
	incidents.RestoreStep
}

func (k *Killer) recordStep(ctx context.Context, in *incidents.Incident, s incidents.RestoreStep, by string) error {
	b := mustJSON(restoreEvent{Incident: in.ID, Vendor: in.Vendor, By: by, RestoreStep: s})
	id := in.ID + "/restore/" + s.Credential + "/" + s.At.UTC().Format(time.RFC3339Nano)
	_, err := k.cfg.Ledger.Append(ctx, ledger.Entry{Type: ledger.TypeAction, ID: id, Incident: in.ID, Time: s.At, Payload: b})
	return err
}

// Hold is a false-positive hold: after a restore, detections of Kind on Key do not act
// alone until Until (their destructive actions wait for a human's approval).
type Hold struct {
	Key      detectors.Key  `json:"key"`
	Kind     detectors.Kind `json:"kind"`
	Until    time.Time      `json:"until"`
	Incident string         `json:"incident"`
	By       string         `json:"by"`
}

// Note says why an action is held, for the decision's reason.
func (h Hold) Note() string {
	return fmt.Sprintf("%s on %s was restored as a false positive (incident %s, by %s): automatic action held for approval until %s",
		h.Kind, h.Key, h.Incident, h.By, h.Until.UTC().Format(time.RFC3339))
}

func holdKey(key detectors.Key, kind detectors.Kind) string {
	return "hold." + hashOf(key.Vendor + "\x00" + key.Credential + "\x00" + string(kind))[:20]
}

// holdPattern stores a hold for every detector kind of in on its key.
func (k *Killer) holdPattern(ctx context.Context, in *incidents.Incident, by string) error {
	until := k.cfg.Clock.Now().Add(k.cfg.Settings.HoldAfterRestore)
	for _, kind := range in.Detectors {
		if kind == KindKillVendor {
			continue
		}
		h := Hold{Key: in.Key(), Kind: kind, Until: until, Incident: in.ID, By: by}
		key := holdKey(h.Key, kind)
		_, rev, err := k.cfg.Store.Get(ctx, actions.KillsBucket, key)
		switch {
		case errors.Is(err, actions.ErrNotFound):
			_, err = k.cfg.Store.Create(ctx, actions.KillsBucket, key, mustJSON(h))
		case err == nil:
			_, err = k.cfg.Store.Update(ctx, actions.KillsBucket, key, mustJSON(h), rev)
		}
		if err != nil {
			return fmt.Errorf("pipeline: store the false-positive hold: %w", err)
		}
	}
	return nil
}

// Held returns the false-positive hold of kind on key in force at now, if any.
func (k *Killer) Held(ctx context.Context, key detectors.Key, kind detectors.Kind, now time.Time) (Hold, bool) {
	b, _, err := k.cfg.Store.Get(ctx, actions.KillsBucket, holdKey(key, kind))
	if err != nil {
		if !errors.Is(err, actions.ErrNotFound) {
			k.cfg.Log.Warn("false-positive hold unreadable: not applied", zap.Error(err))
		}
		return Hold{}, false
	}
	var h Hold
	if err := json.Unmarshal(b, &h); err != nil || !now.Before(h.Until) {
		return Hold{}, false
	}
	return h, true
}

// Holds lists the false-positive holds in force at now.
func (k *Killer) Holds(ctx context.Context, now time.Time) ([]Hold, error) {
	keys, err := k.cfg.Store.Keys(ctx, actions.KillsBucket)
	if err != nil {
		return nil, err
	}
	out := []Hold{}
	for _, key := range keys {
		if !strings.HasPrefix(key, "hold.") {
			continue
		}
		b, _, err := k.cfg.Store.Get(ctx, actions.KillsBucket, key)
		if err != nil {
			continue
		}
		var h Hold
		if json.Unmarshal(b, &h) == nil && now.Before(h.Until) {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b Hold) int { return a.Until.Compare(b.Until) })
	return out, nil
}
