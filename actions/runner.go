package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/ledger"
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

// Recorder appends to the ledger; nothing is applied when it fails.
type Recorder interface {
	Append(ctx context.Context, e ledger.Entry) (ledger.Record, error)
}

// Request is one decision to carry out for an incident.
type Request struct {
	// Incident is the incident the decision is for (read only).
	Incident *ledger.Incident
	// Detection triggered the decision.
	Detection detectors.Detection
	// Result is the playbooks' decision.
	Result playbooks.Result
	// Vendor is the vendor's inventory entry, nil when the vendor is only known from telemetry.
	Vendor *config.Vendor
}

// Deps are what the Runner works with.
type Deps struct {
	// Store keeps claims, approvals, budget, breaker, pause and cooldowns.
	Store Store
	// Ledger records every step; when it fails nothing is applied.
	Ledger Recorder
	// Executors do the work, by action type.
	Executors Registry
	// Inventory is the vendor inventory (for approvals run later).
	Inventory map[string]config.Vendor
	// Clock tells the time (virtual in replay).
	Clock clock.Clock
	// Sleep waits between retries; default a timer. Replay and tests inject their own.
	Sleep func(ctx context.Context, d time.Duration) error
	// Seed seeds the retry jitter, so tests are deterministic.
	Seed uint64
	// Fingerprint hides accessors in records and logs.
	Fingerprint Fingerprinter
	// Instance identifies this process in claims (random per start in the service).
	Instance string
	// OnUpdate is told when a held action changes later (approved and run, rejected,
	// expired), so the incident can be updated. May be nil.
	OnUpdate func(ctx context.Context, incident, vendor, credential string, ref ledger.ActionRef)
	// Log receives what the ledger also records, for operators (no secrets).
	Log *zap.Logger
}

// Runner is the guard rails in front of every executor. It implements the pipeline's
// actor and the HTTP API's controller. It is safe for concurrent use; several Runners
// (instances) may share one Store.
type Runner struct {
	cfg  config.Actions
	plan bool // plan only: replay without Vault
	d    Deps

	mu  sync.Mutex // guards rnd
	rnd *rand.Rand
}

// Options says how a Runner acts.
type Options struct {
	// PlanOnly runs every guard rail as in enforce mode but applies nothing: destructive
	// actions that pass the guards are recorded as planned (replay without a Vault).
	PlanOnly bool
}

// New returns a Runner. cfg's zero values take their documented defaults.
func New(cfg config.Actions, o Options, d Deps) (*Runner, error) {
	if d.Store == nil || d.Ledger == nil {
		return nil, errors.New("actions: a store and a ledger are required")
	}
	if cfg.Mode == "" {
		cfg.Mode = string(playbooks.ModeEnforce)
	}
	def := func(v *int, x int) {
		if *v == 0 {
			*v = x
		}
	}
	defd := func(v *time.Duration, x time.Duration) {
		if *v == 0 {
			*v = x
		}
	}
	def(&cfg.Budget, 10)
	def(&cfg.VendorBudget, 8)
	def(&cfg.Attempts, 5)
	defd(&cfg.BudgetWindow, time.Hour)
	defd(&cfg.Cooldown, 10*time.Minute)
	defd(&cfg.CallTimeout, 5*time.Second)
	defd(&cfg.ApprovalTTL, time.Hour)
	defd(&cfg.ClaimStale, 30*time.Second)
	if d.Clock == nil {
		d.Clock = clock.Real{}
	}
	if d.Sleep == nil {
		d.Sleep = clock.Sleep
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Instance == "" {
		d.Instance = "killswitch"
	}
	if d.Executors == nil {
		d.Executors = Registry{}
	}
	return &Runner{cfg: cfg, plan: o.PlanOnly, d: d, rnd: rand.New(rand.NewPCG(d.Seed, 0x6b73))}, nil
}

// ActionID is the fleet-wide identity of one action: a hash of the incident, the
// action type and its target. Claims and approvals are keyed by it.
func ActionID(incident string, a playbooks.Action) string {
	h := sha256.Sum256([]byte(incident + "\x00" + string(a.Type) + "\x00" + targetKey(a)))
	return "act-" + hex.EncodeToString(h[:12])
}

func targetKey(a playbooks.Action) string {
	switch a.Type {
	case playbooks.ActionNATSPublish:
		return "subject:" + a.Subject
	case playbooks.ActionWebhook:
		return "webhook:" + a.Webhook
	case playbooks.ActionNotify:
		return "notify"
	}
	return "credential:" + a.Credential
}

// Event is the ledger payload of every step of an action.
type Event struct {
	Action     string               `json:"action"`
	Incident   string               `json:"incident"`
	Type       playbooks.ActionType `json:"type"`
	Vendor     string               `json:"vendor"`
	Credential string               `json:"credential,omitempty"`
	Target     string               `json:"target"`
	Stage      string               `json:"stage"`
	Status     ledger.ActionStatus  `json:"status"`
	Mode       playbooks.Mode       `json:"mode"`
	Guard      string               `json:"guard,omitempty"`
	Reason     string               `json:"reason,omitempty"`
	Attempt    int                  `json:"attempt,omitempty"`
	Error      string               `json:"error,omitempty"`
	Retryable  bool                 `json:"retryable,omitempty"`
	Plan       *Plan                `json:"plan,omitempty"`
	Outcome    *Outcome             `json:"outcome,omitempty"`
	Proof      *Verification        `json:"verification,omitempty"`
	Playbooks  []string             `json:"playbooks,omitempty"`
	Approver   string               `json:"approver,omitempty"`
	Instance   string               `json:"instance"`
}

// job is one action being carried out.
type job struct {
	id        string
	target    Target
	mode      playbooks.Mode
	playbooks []string
	ref       ledger.ActionRef
}

// Act carries out a decision's actions for an incident through the guard rails and
// returns the latest state of each. A retryable failure is returned as an error (the
// detection is handled again later; claims keep the actions exactly-once in effect).
func (r *Runner) Act(ctx context.Context, req Request) ([]ledger.ActionRef, error) {
	var refs []ledger.ActionRef
	var errs []error
	payload, _ := json.Marshal(map[string]any{
		"incident": req.Incident, "detection": req.Detection, "decision": req.Result.Decision,
		"decision_id": req.Result.ID, "playbooks": req.Result.Matched,
	})
	for _, a := range req.Result.Decision.Actions {
		ref, err := r.act(ctx, req, a, payload)
		refs = append(refs, ref)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return refs, errors.Join(errs...)
}

// act runs one action: resolve, mode, guards, then claim, intent, apply, verify.
func (r *Runner) act(ctx context.Context, req Request, a playbooks.Action, payload []byte) (ledger.ActionRef, error) {
	vendorMode := ""
	if req.Vendor != nil {
		vendorMode = req.Vendor.Mode
	}
	j := &job{
		id: ActionID(req.Incident.ID, a),
		target: Target{
			Incident: req.Incident.ID, Vendor: req.Incident.Vendor, Credential: a.Credential,
			Action: a, Payload: payload, Fingerprint: r.d.Fingerprint,
		},
		mode:      strictest(playbooks.Mode(r.cfg.Mode), playbooks.Mode(vendorMode), a.Mode),
		playbooks: a.Playbooks,
	}
	j.ref = ledger.ActionRef{ID: j.id, Type: string(a.Type), Credential: a.Credential,
		Playbook: strings.Join(a.Playbooks, ","), Mode: string(j.mode)}
	destructive := a.Type.Destructive()
	if destructive {
		cred, ok := credential(req.Vendor, a.Credential)
		switch {
		case !ok:
			return r.finish(ctx, j, ledger.ActionFailed, "resolve", "credential is not in the vendor inventory", nil)
		case cred.Protected:
			return r.finish(ctx, j, ledger.ActionSkipped, "protected", "protected credentials are never targeted", nil)
		case playbooks.ActionFor(cred.Kind) != a.Type:
			return r.finish(ctx, j, ledger.ActionFailed, "resolve",
				fmt.Sprintf("a %s credential is not taken away by %s", cred.Kind, a.Type), nil)
		}
		j.target.Identity = cred
	}
	j.ref.Target = r.describe(j.target)
	if j.mode == playbooks.ModeDryRun || j.mode == playbooks.ModeShadow {
		return r.shadow(ctx, j)
	}
	exec, ok := r.d.Executors[a.Type]
	if r.plan {
		exec, ok = nil, true // every guard runs, nothing is applied
	}
	if !ok {
		return r.finish(ctx, j, ledger.ActionFailed, "resolve", "no executor for "+string(a.Type)+" is configured", nil)
	}
	if !destructive {
		return r.execute(ctx, j, exec, "")
	}
	// Already decided for this incident (a redelivered detection, a re-escalation)?
	if ref, done, err := r.existing(ctx, req, j); done || err != nil {
		return ref, err
	}
	if hold, reason, err := r.guards(ctx, req, j); err != nil {
		return j.ref, err
	} else if hold != "" {
		return r.hold(ctx, j, hold, reason)
	}
	if err := r.supersede(ctx, j, req.Result.ID); err != nil {
		return j.ref, err
	}
	return r.execute(ctx, j, exec, "")
}

// strictest returns the most restrictive of the modes (dry-run, then shadow, then enforce).
func strictest(modes ...playbooks.Mode) playbooks.Mode {
	out := playbooks.ModeEnforce
	for _, m := range modes {
		switch {
		case m == playbooks.ModeDryRun:
			return playbooks.ModeDryRun
		case m == playbooks.ModeShadow:
			out = playbooks.ModeShadow
		}
	}
	return out
}

func credential(v *config.Vendor, name string) (config.Credential, bool) {
	if v == nil || name == "" {
		return config.Credential{}, false
	}
	c, ok := v.Credentials[name]
	return c, ok
}

// describe names a target for records and reports, with accessors fingerprinted.
func (r *Runner) describe(t Target) string {
	a, id, fp := t.Action, t.Identity, r.d.Fingerprint.Of
	switch a.Type {
	case playbooks.ActionRevokeTokenAccessor:
		return fmt.Sprintf("%s/%s token accessor %s", t.Vendor, t.Credential, fp(id.Accessor))
	case playbooks.ActionDestroySecretID:
		return fmt.Sprintf("%s/%s approle %s secret-id accessor %s", t.Vendor, t.Credential, id.Role, fp(id.SecretIDAccessor))
	case playbooks.ActionRevokeLease:
		return fmt.Sprintf("%s/%s lease %s", t.Vendor, t.Credential, id.LeaseID)
	case playbooks.ActionRevokeLeasePrefix:
		return fmt.Sprintf("%s/%s leases under %s", t.Vendor, t.Credential, id.LeasePrefix)
	case playbooks.ActionRotateKV:
		mount := id.Mount
		if mount == "" {
			mount = "secret"
		}
		return fmt.Sprintf("%s/%s kv %s/%s", t.Vendor, t.Credential, mount, id.Path)
	case playbooks.ActionQuarantinePolicy:
		return fmt.Sprintf("%s/%s policy %s", t.Vendor, t.Credential, id.Policy)
	case playbooks.ActionNATSPublish:
		return "subject " + a.Subject
	case playbooks.ActionWebhook:
		return "webhook " + a.Webhook
	}
	return "notification for " + t.Vendor
}

// record appends one step to the ledger.
func (r *Runner) record(ctx context.Context, j *job, stage string, ev Event) error {
	ev.Action, ev.Incident, ev.Type, ev.Vendor = j.id, j.target.Incident, j.target.Action.Type, j.target.Vendor
	ev.Credential, ev.Target, ev.Stage, ev.Mode = j.target.Credential, j.ref.Target, stage, j.mode
	ev.Playbooks, ev.Instance = j.playbooks, r.d.Instance
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("actions: encode record: %w", err)
	}
	_, err = r.d.Ledger.Append(ctx, ledger.Entry{
		Type: ledger.TypeAction, ID: j.id + "/" + stage, Incident: j.target.Incident,
		Time: r.d.Clock.Now(), Payload: b,
	})
	if err != nil {
		return fmt.Errorf("actions: record %s of %s: %w", stage, j.id, err)
	}
	return nil
}

// finish records a final status without running anything.
func (r *Runner) finish(ctx context.Context, j *job, status ledger.ActionStatus, guard, reason string, plan *Plan) (ledger.ActionRef, error) {
	if j.ref.Target == "" {
		j.ref.Target = r.describe(j.target)
	}
	j.ref.Status, j.ref.At, j.ref.Detail = status, r.d.Clock.Now(), reason
	err := r.record(ctx, j, string(status), Event{Status: status, Guard: guard, Reason: reason, Plan: plan})
	if status == ledger.ActionFailed || status == ledger.ActionSkipped {
		r.d.Log.Warn("action not run", zap.String("action", j.id), zap.String("type", string(j.target.Action.Type)),
			zap.String("guard", guard), zap.String("reason", reason))
	}
	return j.ref, err
}

// shadow plans (read-only) what enforce would do, applying nothing.
func (r *Runner) shadow(ctx context.Context, j *job) (ledger.ActionRef, error) {
	exec, ok := r.d.Executors[j.target.Action.Type]
	if j.mode == playbooks.ModeDryRun || r.plan || !ok {
		return r.finish(ctx, j, ledger.ActionPlanned, string(j.mode), "planned, not applied ("+string(j.mode)+")", nil)
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	p, err := exec.Plan(cctx, j.target)
	cancel()
	if err != nil {
		return r.finish(ctx, j, ledger.ActionPlanned, "shadow", "planned, not applied (shadow); the plan lookup failed: "+err.Error(), nil)
	}
	return r.finish(ctx, j, ledger.ActionPlanned, "shadow", "planned, not applied (shadow)", &p)
}
