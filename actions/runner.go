package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Request is one decision to carry out for an incident.
type Request struct {
	// Incident is the incident the decision is for (read only).
	Incident *incidents.Incident
	// Detection triggered the decision.
	Detection detectors.Detection
	// Result is the playbooks' decision.
	Result playbooks.Result
	// Vendor is the vendor's inventory entry, nil when the vendor is only known from telemetry.
	Vendor *killswitch.Vendor
}

// Deps are what the Runner works with.
type Deps struct {
	// Store keeps claims, approvals, budget, breaker, pause and cooldowns.
	Store Store
	// Ledger records every step; when it fails nothing is applied.
	Ledger ledger.Appender
	// Executors do the work, by action type.
	Executors Registry
	// Inventory is the vendor inventory (for approvals run later).
	Inventory killswitch.Inventory
	// Guards is the guard chain; nil is Guards(the runner's Control).
	Guards func(*Control) []Guard
	// Clock tells the time (virtual in replay).
	Clock clock.Clock
	// Sleep waits between retries; default clock.Sleep. Replay and tests inject their own.
	Sleep func(ctx context.Context, d time.Duration) error
	// Seed seeds the retry jitter, so tests are deterministic.
	Seed uint64
	// Fingerprint hides accessors in records and logs.
	Fingerprint Fingerprinter
	// Instance identifies this process in claims (random per start in the service).
	Instance string
	// Log receives what the ledger also records, for operators (no secrets).
	Log *zap.Logger
	// Notifier announces actions in a veto window to humans; nil announces them only in
	// the ledger, the incident and the API.
	Notifier Notifier
}

// Runner is the executor loop: every action of a decision goes through target
// resolution, the mode, the guard chain, the idempotency claim, the intent in the
// ledger, Apply with retries and Verify. It is safe for concurrent use, and several
// Runners (instances) may share one Store: the claims keep every action exactly-once in
// effect.
type Runner struct {
	s         Settings
	d         Deps
	guards    []Guard
	control   *Control
	approvals *Approvals

	mu  sync.Mutex // guards rnd
	rnd *rand.Rand
}

// New returns a Runner. s's zero values take their documented defaults.
func New(s Settings, d Deps) (*Runner, error) {
	if d.Store == nil || d.Ledger == nil {
		return nil, errors.New("actions: a store and a ledger are required")
	}
	s.defaults()
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
	r := &Runner{s: s, d: d, rnd: rand.New(rand.NewPCG(d.Seed, 0x6b73))}
	r.control = &Control{s: s, store: d.Store, ledger: d.Ledger, clock: d.Clock, log: d.Log}
	r.approvals = &Approvals{r: r}
	if d.Guards != nil {
		r.guards = d.Guards(r.control)
	} else {
		r.guards = Guards(r.control)
	}
	return r, nil
}

// Mode returns the global action mode.
func (r *Runner) Mode() killswitch.Mode { return r.s.Mode }

// Fingerprint returns the fingerprinter that hides identifiers in records.
func (r *Runner) Fingerprint() Fingerprinter { return r.d.Fingerprint }

// Control returns the control plane: pause, breaker, budget.
func (r *Runner) Control() *Control { return r.control }

// Approvals returns the held actions and their approvals.
func (r *Runner) Approvals() *Approvals { return r.approvals }

// Budget reports the revocation budget for the playbooks' input.
func (r *Runner) Budget(ctx context.Context) playbooks.Budget { return r.control.Budget(ctx) }

// ActionID is the fleet-wide identity of one action: a hash of the incident, the
// action type and its target. Claims and approvals are keyed by it.
func ActionID(incident string, a playbooks.Action) string {
	h := sha256.Sum256([]byte(incident + "\x00" + string(a.Type) + "\x00" + targetKey(a)))
	return "act-" + hex.EncodeToString(h[:12])
}

// actionScope is what an action is exactly-once within: the incident for what takes
// something away (revoked once per incident, however often it escalates), the incident's
// decision for what tells someone (notify, nats.publish, webhook: each escalation is
// told, a redelivered detection is not told twice).
func actionScope(req Request, a playbooks.Action) string {
	if a.Type.Destructive() || req.Result.ID == "" {
		return req.Incident.ID
	}
	return req.Incident.ID + "\x00" + req.Result.ID
}

func targetKey(a playbooks.Action) string {
	switch a.Type {
	case killswitch.ActionNATSPublish:
		return "subject:" + a.Subject
	case killswitch.ActionWebhook:
		return "webhook:" + a.Webhook
	case killswitch.ActionNotify:
		return "notify"
	}
	return "credential:" + a.Credential
}

// Event is the ledger payload of every step of an action.
type Event struct {
	Action     string                 `json:"action"`
	Incident   string                 `json:"incident"`
	Type       killswitch.ActionType  `json:"type"`
	Vendor     string                 `json:"vendor"`
	Credential string                 `json:"credential,omitempty"`
	Target     string                 `json:"target"`
	Stage      string                 `json:"stage"`
	Status     incidents.ActionStatus `json:"status"`
	Mode       killswitch.Mode        `json:"mode"`
	Guard      string                 `json:"guard,omitempty"`
	Reason     string                 `json:"reason,omitempty"`
	Attempt    int                    `json:"attempt,omitempty"`
	Error      string                 `json:"error,omitempty"`
	Retryable  bool                   `json:"retryable,omitempty"`
	Cause      killswitch.Reason      `json:"cause,omitempty"`
	Plan       *Plan                  `json:"plan,omitempty"`
	Outcome    *Outcome               `json:"outcome,omitempty"`
	Proof      *Verification          `json:"verification,omitempty"`
	Playbooks  []string               `json:"playbooks,omitempty"`
	Approver   string                 `json:"approver,omitempty"`
	// Round is the claim's round when it is not the first (a retry taking the claim over).
	Round    int    `json:"round,omitempty"`
	Instance string `json:"instance"`
}

// job is one action being carried out.
type job struct {
	id        string
	target    Target
	mode      killswitch.Mode
	playbooks []string
	ref       incidents.ActionRef
	// round is the claim's round (set when the claim is taken) and approval the
	// approval's number (held actions): later rounds and approvals are told apart in the
	// ledger records' IDs.
	round, approval int
	// attempts bounds the Apply attempts of this run (a tick's retry of an approved
	// action makes one); 0 is Settings.Attempts.
	attempts int
}

// maxAttempts is the bound of Apply attempts of this run.
func (j *job) maxAttempts(def int) int {
	if j.attempts > 0 {
		return j.attempts
	}
	return def
}

// Act carries out a decision's actions for an incident through the guard rails and
// returns the latest state of each. A retryable failure is returned as an error (the
// detection is handled again later; claims keep the actions exactly-once in effect).
func (r *Runner) Act(ctx context.Context, req Request) ([]incidents.ActionRef, error) {
	var refs []incidents.ActionRef
	var errs []error
	payload, err := r.payload(req)
	if err != nil {
		return nil, err
	}
	for _, a := range req.Result.Decision.Actions {
		ref, err := r.act(ctx, req, a, payload)
		refs = append(refs, ref)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return refs, errors.Join(errs...)
}

// payload is the JSON document of req that actions sending something carry.
func (r *Runner) payload(req Request) ([]byte, error) {
	payload, err := json.Marshal(map[string]any{
		"incident": req.Incident, "detection": req.Detection, "decision": req.Result.Decision,
		"decision_id": req.Result.ID, "playbooks": req.Result.Matched,
	})
	if err != nil {
		return nil, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("actions: encode the incident: %w", err))
	}
	return payload, nil
}

// newJob builds the job of one action and resolves its target against req.Vendor:
// skip reports that it was finished (recorded) without running — a protected
// credential, or one that does not resolve.
func (r *Runner) newJob(ctx context.Context, req Request, a playbooks.Action, payload []byte) (j *job, skip bool, err error) {
	var vendorMode killswitch.Mode
	if req.Vendor != nil {
		vendorMode = req.Vendor.Mode
	}
	j = &job{
		id: ActionID(actionScope(req, a), a),
		target: Target{
			Incident: req.Incident.ID, Vendor: req.Incident.Vendor, Credential: a.Credential,
			Action: a, Payload: payload, Fingerprint: r.d.Fingerprint,
		},
		mode:      killswitch.Strictest(r.s.Mode, vendorMode, a.Mode),
		playbooks: a.Playbooks,
	}
	j.ref = incidents.ActionRef{ID: j.id, Type: a.Type, Credential: a.Credential,
		Playbook: strings.Join(a.Playbooks, ","), Mode: j.mode}
	if a.Type.Destructive() {
		cred, err := req.Vendor.Target(a.Credential, a.Type)
		switch {
		case errors.Is(err, killswitch.ErrProtected):
			j.ref, err = r.finish(ctx, j, incidents.ActionSkipped, "protected", err.Error(), nil)
			return j, true, err
		case err != nil:
			j.ref, err = r.finish(ctx, j, incidents.ActionFailed, "resolve", err.Error(), nil)
			return j, true, err
		}
		j.target.Identity = cred
	}
	j.ref.Target = r.describe(j.target)
	return j, false, nil
}

// prepare builds the job of one action and finds its executor (nil in plan-only mode:
// every guard runs, nothing is applied). done reports that the action was finished
// (recorded) already — protected, unresolved, planned in shadow or dry-run, or with no
// executor — and ref is then its state.
func (r *Runner) prepare(ctx context.Context, req Request, a playbooks.Action, payload []byte) (j *job, exec Executor, done bool, ref incidents.ActionRef, err error) {
	j, skip, err := r.newJob(ctx, req, a, payload)
	switch {
	case skip || err != nil:
		return j, nil, true, j.ref, err
	case j.mode == killswitch.ModeDryRun || j.mode == killswitch.ModeShadow:
		ref, err = r.shadow(ctx, j)
		return j, nil, true, ref, err
	case r.s.PlanOnly:
		return j, nil, false, j.ref, nil
	}
	exec, ok := r.d.Executors[a.Type]
	if !ok {
		ref, err = r.finish(ctx, j, incidents.ActionFailed, "resolve", "no executor for "+string(a.Type)+" is configured", nil)
		return j, nil, true, ref, err
	}
	return j, exec, false, j.ref, nil
}

// act runs one action: resolve, mode, guards, then claim, intent, apply, verify.
func (r *Runner) act(ctx context.Context, req Request, a playbooks.Action, payload []byte) (incidents.ActionRef, error) {
	j, exec, done, ref, err := r.prepare(ctx, req, a, payload)
	if done {
		return ref, err
	}
	if !a.Type.Destructive() {
		return r.execute(ctx, j, exec, "", false)
	}
	// Already decided for this incident (a redelivered detection, a re-escalation)?
	var (
		c              Claim
		claimed, held  bool
		h              Held
		heldRev        uint64
		claimErr, hErr error
	)
	if err := concurrently(
		func() error { _, claimed, claimErr = getJSON(ctx, r.d.Store, ClaimsBucket, j.id, &c); return claimErr },
		func() error { h, heldRev, held, hErr = r.approvals.get(ctx, j.id); return hErr },
	); err != nil {
		return j.ref, err
	}
	switch {
	case held && h.State == HoldApproved: // a human decided: it runs under the approval
		return r.approvals.redeliver(ctx, h, heldRev)
	case held && (h.State == HoldPending || h.State == HoldFailed) && !req.Result.Decision.RequiresApproval:
		// superseded below if the guards let it through
	case held && h.State != HoldDone && h.State != HoldSuperseded:
		return h.ref(j.ref), nil // pending, failed, rejected, expired, vetoed, or in (or past) its veto window
	case claimed: // reconciled: finished if unfinished (pause and breaker still checked before Apply)
		return r.execute(ctx, j, exec, "", false)
	case held:
		j.ref.Status, j.ref.At, j.ref.Detail = h.State.actionStatus(), h.HeldAt, h.Reason
		return j.ref, nil
	}
	// Nothing yet, or a pending (or failed) hold that this decision (needing no approval)
	// supersedes if the guards let it through.
	chk := Check{Now: r.d.Clock.Now(), Action: j.id, Incident: j.target.Incident, Vendor: j.target.Vendor,
		Credential: j.target.Credential, RequiresApproval: req.Result.Decision.RequiresApproval, Reason: req.Result.Decision.Reason}
	if guard, hold, err := runGuards(ctx, r.guards, chk); err != nil {
		return j.ref, err
	} else if hold != "" {
		return r.approvals.hold(ctx, j, guard, hold)
	}
	if w := req.Result.Decision.VetoWindow.D(); w > 0 {
		// Announced now, run when the window ends unless vetoed (veto.go).
		return r.approvals.announce(ctx, j, w, req.Result.Decision.Reason, h, heldRev, held)
	}
	if held && h.State == HoldPending {
		if err := r.approvals.supersede(ctx, j, h, heldRev, req.Result.ID); err != nil {
			return j.ref, err
		}
	}
	return r.execute(ctx, j, exec, "", true)
}

// concurrently runs fs at once and returns their errors joined.
func concurrently(fs ...func() error) error {
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// describe names a target for records and reports, with accessors and lease IDs fingerprinted.
func (r *Runner) describe(t Target) string {
	a, id, fp := t.Action, t.Identity, r.d.Fingerprint.Of
	switch a.Type {
	case killswitch.ActionRevokeTokenAccessor:
		return fmt.Sprintf("%s/%s token accessor %s", t.Vendor, t.Credential, fp(id.Accessor))
	case killswitch.ActionDestroySecretID:
		return fmt.Sprintf("%s/%s approle %s secret-id accessor %s", t.Vendor, t.Credential, id.Role, fp(id.SecretIDAccessor))
	case killswitch.ActionRevokeLease:
		return fmt.Sprintf("%s/%s lease %s", t.Vendor, t.Credential, fp(id.LeaseID))
	case killswitch.ActionRevokeLeasePrefix:
		return fmt.Sprintf("%s/%s leases under %s", t.Vendor, t.Credential, id.LeasePrefix)
	case killswitch.ActionRotateKV:
		mount := id.Mount
		if mount == "" {
			mount = "secret"
		}
		return fmt.Sprintf("%s/%s kv %s/%s", t.Vendor, t.Credential, mount, id.Path)
	case killswitch.ActionQuarantinePolicy:
		return fmt.Sprintf("%s/%s policy %s", t.Vendor, t.Credential, id.Policy)
	case killswitch.ActionDisableEntity:
		return fmt.Sprintf("%s/%s identity entity %s", t.Vendor, t.Credential, id.Entity)
	case killswitch.ActionNATSPublish:
		return "subject " + a.Subject
	case killswitch.ActionWebhook:
		return "webhook " + a.Webhook
	}
	return "notification for " + t.Vendor
}

// entry builds the ledger entry of one step.
func (r *Runner) entry(j *job, stage string, ev Event) (ledger.Entry, error) {
	ev.Action, ev.Incident, ev.Type, ev.Vendor = j.id, j.target.Incident, j.target.Action.Type, j.target.Vendor
	ev.Credential, ev.Target, ev.Stage, ev.Mode = j.target.Credential, j.ref.Target, stage, j.mode
	ev.Playbooks, ev.Instance = j.playbooks, r.d.Instance
	id := j.id + "/" + stage
	if j.approval > 1 {
		id += "/a" + strconv.Itoa(j.approval)
	}
	if j.round > 1 {
		ev.Round = j.round
		id += "/r" + strconv.Itoa(j.round)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return ledger.Entry{}, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("actions: encode record: %w", err))
	}
	return ledger.Entry{Type: ledger.TypeAction, ID: id, Incident: j.target.Incident,
		Time: r.d.Clock.Now(), Payload: b}, nil
}

// record appends one step to the ledger.
func (r *Runner) record(ctx context.Context, j *job, stage string, ev Event) error {
	return r.queue(ctx, j, stage, ev)()
}

// queue places one step in the ledger's chain now and returns the wait for it to be
// stored: steps recorded one after the other keep their order, and the caller waits only
// where it must (before Apply). A ledger that cannot queue appends at once.
func (r *Runner) queue(ctx context.Context, j *job, stage string, ev Event) (wait func() error) {
	e, err := r.entry(j, stage, ev)
	if err != nil {
		return func() error { return err }
	}
	stored := ledger.Later(ctx, r.d.Ledger, e)
	return func() error {
		if err := stored(); err != nil {
			return fmt.Errorf("actions: record %s of %s: %w", stage, j.id, err)
		}
		return nil
	}
}

// finish records a final status without running anything.
func (r *Runner) finish(ctx context.Context, j *job, status incidents.ActionStatus, guard, reason string, plan *Plan) (incidents.ActionRef, error) {
	if j.ref.Target == "" {
		j.ref.Target = r.describe(j.target)
	}
	j.ref.Status, j.ref.At, j.ref.Detail = status, r.d.Clock.Now(), reason
	err := r.record(ctx, j, string(status), Event{Status: status, Guard: guard, Reason: reason, Plan: plan})
	if status == incidents.ActionFailed || status == incidents.ActionSkipped {
		r.d.Log.Warn("action not run", zap.String("action", j.id), zap.String("type", string(j.target.Action.Type)),
			zap.String("guard", guard), zap.String("reason", reason))
	}
	return j.ref, err
}

// shadow plans (read-only) what enforce would do, applying nothing.
func (r *Runner) shadow(ctx context.Context, j *job) (incidents.ActionRef, error) {
	exec, ok := r.d.Executors[j.target.Action.Type]
	if j.mode == killswitch.ModeDryRun || r.s.PlanOnly || !ok {
		return r.finish(ctx, j, incidents.ActionPlanned, string(j.mode), "planned, not applied ("+string(j.mode)+")", nil)
	}
	cctx, cancel := context.WithTimeout(ctx, r.s.CallTimeout)
	p, err := exec.Plan(cctx, j.target)
	cancel()
	if err != nil {
		return r.finish(ctx, j, incidents.ActionPlanned, "shadow", "planned, not applied (shadow); the plan lookup failed: "+err.Error(), nil)
	}
	return r.finish(ctx, j, incidents.ActionPlanned, "shadow", "planned, not applied (shadow)", &p)
}
