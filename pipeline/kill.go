package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// KindKillVendor is the detector kind of a human's order to cut a whole vendor off: it
// opens (or joins) the vendor's incident like a detection does.
const KindKillVendor detectors.Kind = "kill_vendor"

// KillPlaybook is what kill-vendor's decisions and actions name as their playbook.
const KillPlaybook = "kill-vendor"

// The kill errors.
var (
	// ErrUnknownVendor: kill-vendor needs the vendor in the inventory.
	ErrUnknownVendor = errors.New("the vendor is not in the inventory")
	// ErrNoOrder: no such kill order or restorable incident.
	ErrNoOrder = errors.New("no such kill order")
	// ErrSameApprover: the second approver must be someone else than who ordered.
	ErrSameApprover = errors.New("a kill must be approved by someone other than who ordered it")
	// ErrOrderState: the order is not in a state that allows this.
	ErrOrderState = errors.New("the kill order is not pending")
	// ErrPaused: automation is paused; a kill would only be held.
	ErrPaused = errors.New("automation is paused: resume it first, or the kill would be held before every apply")
	// ErrNothingToRestore: the incident took nothing away.
	ErrNothingToRestore = errors.New("the incident took nothing away")
	// ErrNoReviver: restore needs Vault.
	ErrNoReviver = errors.New("restore needs Vault (none is configured)")
)

// staleRun is how long a kill order may stay running before it counts as abandoned.
const staleRun = 5 * time.Minute

// KillSettings configures kill-vendor and restore (the `kill:` section).
type KillSettings struct {
	// SecondApprover makes a kill ordered by one user wait until another approves it.
	SecondApprover bool `yaml:"second_approver"`
	// WrapTTL is how long a re-issued credential waits, response-wrapped, for the vendor
	// to pick it up. Default 24h.
	WrapTTL time.Duration `yaml:"wrap_ttl"`
	// HoldAfterRestore is how long, after an incident was restored as a false positive,
	// a detection of the same kind on the same key does not act alone: its destructive
	// actions wait for a human's approval instead. Default 24h; it is never silent.
	HoldAfterRestore time.Duration `yaml:"hold_after_restore"`
}

func (s *KillSettings) defaults() {
	if s.WrapTTL <= 0 {
		s.WrapTTL = 24 * time.Hour
	}
	if s.HoldAfterRestore <= 0 {
		s.HoldAfterRestore = 24 * time.Hour
	}
}

// Enumerator finds what a vendor holds in Vault beyond its inventory credentials
// (actions/vault): secret-ids of its AppRole roles, leases under its prefixes, its KV
// secrets, its identity entity.
type Enumerator interface {
	Enumerate(ctx context.Context, vendor string, v killswitch.Vendor) (map[string]killswitch.Credential, error)
}

// Reviver brings back what an action took away, where Vault allows (actions/vault):
// re-enable an entity, restore a quarantined policy, re-issue an AppRole secret-id or
// a KV secret response-wrapped. Reviving again for the same incident does not re-issue
// twice.
type Reviver interface {
	Revive(ctx context.Context, incident string, c killswitch.Credential, t killswitch.ActionType, wrapTTL time.Duration) (Revival, error)
}

// Revival is what Revive did for one credential.
type Revival struct {
	Outcome  incidents.RestoreOutcome
	Evidence string
	// WrapToken is the response-wrapping token of a re-issued credential: handed to the
	// operator once (for the vendor), never stored, logged or recorded.
	WrapToken     string
	WrapAccessor  string
	WrapExpiresAt time.Time
}

// KillState is where a kill order stands.
type KillState string

// The kill order states.
const (
	// KillPending: ordered, waiting for a second approver.
	KillPending KillState = "pending"
	// KillRunning: approved; the plan is being applied and verified.
	KillRunning KillState = "running"
	// KillDone: every destructive action of the plan is verified.
	KillDone KillState = "done"
	// KillPlanned: shadow or dry-run: the whole plan was recorded, nothing applied.
	KillPlanned KillState = "planned"
	// KillIncomplete: some action was not verified; the order may be approved again.
	KillIncomplete KillState = "incomplete"
	// KillRejected: the second approver refused it; nothing ran.
	KillRejected KillState = "rejected"
	// KillRestored: the incident was restored as a false positive.
	KillRestored KillState = "restored"
)

// KillOrder is one order to cut a vendor off: its plan, who ordered and approved it,
// what ran, and how long each part took. It is stored in actions.KillsBucket.
type KillOrder struct {
	ID          string    `json:"id"`
	Vendor      string    `json:"vendor"`
	Reason      string    `json:"reason"`
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	State       KillState `json:"state"`
	ApprovedBy  string    `json:"approved_by,omitempty"`
	ApprovedAt  time.Time `json:"approved_at,omitzero"`
	RejectedBy  string    `json:"rejected_by,omitempty"`
	// Incident is the incident the order opened or joined.
	Incident string `json:"incident,omitempty"`
	// Plan is the plan shown when the order was given.
	Plan KillPlan `json:"plan"`
	// Actions are the latest states of the plan's actions, once it ran.
	Actions []incidents.ActionRef `json:"actions,omitempty"`
	// Restorable keeps, per credential taken away, what restore needs to bring it
	// back — names only (mount, role, path, entity, policy), never an accessor or lease.
	Restorable map[string]killswitch.Credential `json:"restorable,omitempty"`
	// ContainedAt and ExposureWindowSeconds are the incident's once every action is verified.
	ContainedAt           *time.Time `json:"contained_at,omitempty"`
	ExposureWindowSeconds *float64   `json:"exposure_window_seconds,omitempty"`
	// ApplySeconds is approval → last verification (the apply and verify of the plan).
	ApplySeconds float64 `json:"apply_seconds,omitempty"`
	// Restore is set once the order's incident was restored.
	Restore *incidents.RestoreNote `json:"restore,omitempty"`
}

// KillPlan is everything a vendor holds, resolved read-only before anything runs.
type KillPlan struct {
	Vendor string `json:"vendor"`
	// Mode is the mode the plan would run in (shadow and dry-run only plan).
	Mode killswitch.Mode `json:"mode"`
	// Steps are one action per credential: inventory credentials, then what Vault enumerated.
	Steps []actions.PlanStep `json:"steps"`
	// Enumerated counts the steps found in Vault beyond the inventory.
	Enumerated int `json:"enumerated"`
	// Protected lists the protected credentials left alone.
	Protected []string `json:"protected,omitempty"`
	// Problems lists what could not be enumerated or planned; the plan still runs what it can.
	Problems []string `json:"problems,omitempty"`
	// PlannedAt is when it was planned and PlanSeconds how long planning took.
	PlannedAt   time.Time `json:"planned_at"`
	PlanSeconds float64   `json:"plan_seconds"`
}

// Restoration is the answer to a restore: the incident's restore note, and the
// response-wrapping tokens of the re-issued credentials, by credential — shown once, to
// be handed to the vendor (each can be unwrapped once, before it expires).
type Restoration struct {
	Incident string                 `json:"incident"`
	Vendor   string                 `json:"vendor"`
	Note     incidents.RestoreNote  `json:"restore"`
	Wrapped  map[string]WrappedItem `json:"wrapped,omitempty"`
}

// WrappedItem is one re-issued credential, response-wrapped.
type WrappedItem struct {
	// Token unwraps the new credential once (vault unwrap TOKEN).
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// KillConfig configures a Killer.
type KillConfig struct {
	Settings KillSettings
	// Store keeps the orders (actions.KillsBucket) and is the runner's store.
	Store actions.Store
	// Runner plans, and carries out the plans (it is the responder's Actor).
	Runner *actions.Runner
	// Enumerator finds holdings beyond the inventory; nil plans the inventory alone.
	Enumerator Enumerator
	// Reviver restores; nil refuses restores (ErrNoReviver).
	Reviver Reviver
	// Incidents finds an incident by ID (for restore).
	Incidents interface {
		Incident(ctx context.Context, id string) (*incidents.Incident, error)
	}
	Inventory killswitch.Inventory
	Ledger    ledger.Appender
	Clock     clock.Clock
	Log       *zap.Logger
	Metrics   *metrics.Metrics
}

// Killer cuts whole vendors off (one plan of everything they hold, approved once,
// applied and verified, one incident, one exposure window) and restores them after a
// false positive. Orders live in the Store, so every instance sees them.
type Killer struct {
	cfg KillConfig
	r   *Responder
}

// NewKiller returns a Killer whose orders go through r (the pipeline's Responder).
func NewKiller(cfg KillConfig, r *Responder) *Killer {
	cfg.Settings.defaults()
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Killer{cfg: cfg, r: r}
}

// Settings returns the settings in force (defaults applied).
func (k *Killer) Settings() KillSettings { return k.cfg.Settings }

// targets returns every credential of vendor to take away: the inventory's, and what
// the Enumerator found; problems lists what could not be enumerated.
func (k *Killer) targets(ctx context.Context, vendor string) (*killswitch.Vendor, int, []string, error) {
	v := k.cfg.Inventory.Vendor(vendor)
	if v == nil {
		return nil, 0, nil, fmt.Errorf("kill %q: %w", vendor, ErrUnknownVendor)
	}
	all := maps.Clone(v.Credentials)
	if all == nil {
		all = map[string]killswitch.Credential{}
	}
	var problems []string
	n := 0
	if k.cfg.Enumerator != nil && !v.Vault.Empty() {
		extra, err := k.cfg.Enumerator.Enumerate(ctx, vendor, *v)
		if err != nil {
			problems = append(problems, "enumerate the vendor's Vault holdings: "+err.Error())
		}
		for name, c := range extra {
			if _, dup := all[name]; !dup {
				all[name] = c
				n++
			}
		}
	}
	v.Credentials = all
	return v, n, problems, nil
}

// Plan plans, read-only, the kill of vendor: what would die. Nothing is recorded.
func (k *Killer) Plan(ctx context.Context, vendor string) (KillPlan, error) {
	start := k.cfg.Clock.Now()
	v, n, problems, err := k.targets(ctx, vendor)
	if err != nil {
		return KillPlan{}, err
	}
	p := KillPlan{Vendor: vendor, Enumerated: n, Problems: problems, PlannedAt: start,
		Mode: killswitch.Strictest(k.cfg.Runner.Mode(), v.Mode)}
	for _, name := range slices.Sorted(maps.Keys(v.Credentials)) {
		if v.Credentials[name].Protected {
			p.Protected = append(p.Protected, name)
		}
	}
	p.Steps = k.cfg.Runner.PlanAll(ctx, vendor, v.Credentials)
	for _, s := range p.Steps {
		if s.Error != "" {
			p.Problems = append(p.Problems, s.Credential+": "+s.Error)
		}
	}
	p.PlanSeconds = k.cfg.Clock.Now().Sub(start).Seconds()
	return p, nil
}

// Order orders the kill of vendor by user by, for reason: it plans, opens (or joins)
// the vendor's incident, and — unless a second approver is required — applies and
// verifies the plan at once on by's authority. It returns the order as it stands.
func (k *Killer) Order(ctx context.Context, vendor, by, reason string) (KillOrder, error) {
	if err := k.notPaused(ctx); err != nil {
		return KillOrder{}, err
	}
	plan, err := k.Plan(ctx, vendor)
	if err != nil {
		return KillOrder{}, err
	}
	now := plan.PlannedAt
	o := KillOrder{ID: orderID(vendor, now), Vendor: vendor, Reason: reason, RequestedBy: by, RequestedAt: now,
		State: KillPending, Plan: plan}
	if _, err := k.cfg.Store.Create(ctx, actions.KillsBucket, orderKey(o.ID), mustJSON(o)); err != nil {
		return KillOrder{}, fmt.Errorf("pipeline: store kill order: %w", err)
	}
	k.cfg.Log.Warn("kill-vendor ordered", zap.String("vendor", vendor), zap.String("order", o.ID), zap.String("by", by),
		zap.Int("steps", len(plan.Steps)), zap.Bool("second_approver", k.cfg.Settings.SecondApprover))
	if k.cfg.Settings.SecondApprover {
		// The incident opens now; nothing runs until another user approves.
		if err := k.handle(ctx, &o, "", nil); err != nil {
			return o, err
		}
		return o, k.save(ctx, o)
	}
	return k.run(ctx, o, by)
}

// Approve approves a pending order as user by (who must not be who ordered it, when a
// second approver is required) and runs it. An incomplete order may be approved again:
// what is already verified is not applied twice.
func (k *Killer) Approve(ctx context.Context, id, by string) (KillOrder, error) {
	o, rev, err := k.Get(ctx, id)
	if err != nil {
		return o, err
	}
	// A run abandoned by a crashed instance (running for longer than any run takes) may
	// be approved again: claims keep what it did from being done twice.
	stale := o.State == KillRunning && k.cfg.Clock.Now().Sub(o.ApprovedAt) > staleRun
	switch {
	case o.State != KillPending && o.State != KillIncomplete && !stale:
		return o, fmt.Errorf("%w (it is %s)", ErrOrderState, o.State)
	case k.cfg.Settings.SecondApprover && by == o.RequestedBy:
		return o, ErrSameApprover
	}
	if err := k.notPaused(ctx); err != nil {
		return o, err
	}
	o.State, o.ApprovedAt = KillRunning, k.cfg.Clock.Now()
	if _, err := k.cfg.Store.Update(ctx, actions.KillsBucket, orderKey(id), mustJSON(o), rev); err != nil {
		if errors.Is(err, actions.ErrStale) {
			return o, fmt.Errorf("%w: someone else decided it meanwhile", ErrOrderState)
		}
		return o, err
	}
	return k.run(ctx, o, by)
}

// Reject refuses a pending order; nothing of it runs.
func (k *Killer) Reject(ctx context.Context, id, by, reason string) (KillOrder, error) {
	o, rev, err := k.Get(ctx, id)
	if err != nil {
		return o, err
	}
	if o.State != KillPending {
		return o, fmt.Errorf("%w (it is %s)", ErrOrderState, o.State)
	}
	o.State, o.RejectedBy = KillRejected, by
	if reason != "" {
		o.Reason += " — rejected: " + reason
	}
	if _, err := k.cfg.Store.Update(ctx, actions.KillsBucket, orderKey(id), mustJSON(o), rev); err != nil {
		return o, err
	}
	return o, k.note(ctx, o, "rejected", map[string]any{"order": o.ID, "by": by, "reason": reason})
}

// Get returns an order and its revision.
func (k *Killer) Get(ctx context.Context, id string) (KillOrder, uint64, error) {
	b, rev, err := k.cfg.Store.Get(ctx, actions.KillsBucket, orderKey(id))
	if errors.Is(err, actions.ErrNotFound) {
		return KillOrder{}, 0, fmt.Errorf("%q: %w", id, ErrNoOrder)
	}
	if err != nil {
		return KillOrder{}, 0, err
	}
	var o KillOrder
	if err := json.Unmarshal(b, &o); err != nil {
		return KillOrder{}, 0, fmt.Errorf("pipeline: kill order %s: %w", id, err)
	}
	return o, rev, nil
}

// Orders lists every order, newest first.
func (k *Killer) Orders(ctx context.Context) ([]KillOrder, error) {
	keys, err := k.cfg.Store.Keys(ctx, actions.KillsBucket)
	if err != nil {
		return nil, err
	}
	out := []KillOrder{}
	for _, key := range keys {
		id, ok := strings.CutPrefix(key, "order.")
		if !ok {
			continue
		}
		o, _, err := k.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b KillOrder) int { return b.RequestedAt.Compare(a.RequestedAt) })
	return out, nil
}

// run applies and verifies o's plan on approver's authority. Vault is enumerated again:
// what appeared since the plan was shown is cut too.
func (k *Killer) run(ctx context.Context, o KillOrder, approver string) (KillOrder, error) {
	o.ApprovedBy, o.ApprovedAt = approver, k.cfg.Clock.Now()
	v, _, problems, err := k.targets(ctx, o.Vendor)
	if err != nil {
		return o, err
	}
	if len(problems) > 0 {
		k.cfg.Log.Warn("kill-vendor: enumeration incomplete; cutting what is known", zap.String("order", o.ID), zap.Strings("problems", problems))
	}
	o.Restorable = map[string]killswitch.Credential{}
	var acts []playbooks.Action
	for _, name := range slices.Sorted(maps.Keys(v.Credentials)) {
		c := v.Credentials[name]
		if c.Protected || c.Kind.Action() == "" {
			continue
		}
		acts = append(acts, playbooks.Action{Type: c.Kind.Action(), Credential: name, Playbooks: []string{KillPlaybook}})
		o.Restorable[name] = restorable(c)
	}
	var final *incidents.Incident
	runErr := k.handle(ctx, &o, approver, &order{vendor: v, done: func(in *incidents.Incident) { final = in },
		result: playbooks.Result{Decision: playbooks.Decision{Actions: acts}}})
	if final != nil {
		o.Incident, o.ContainedAt, o.ExposureWindowSeconds = final.ID, final.ContainedAt, final.ExposureWindowSeconds
		o.Actions = nil
		last := o.ApprovedAt
		for _, a := range final.Actions {
			if slices.Contains(strings.Split(a.Playbook, ","), KillPlaybook) {
				o.Actions = append(o.Actions, a)
				if a.At.After(last) {
					last = a.At
				}
			}
		}
		o.ApplySeconds = last.Sub(o.ApprovedAt).Seconds()
	}
	o.State = KillIncomplete
	switch {
	case final != nil && final.ContainedAt != nil && runErr == nil:
		o.State = KillDone
	case runErr == nil && len(o.Actions) > 0 && !slices.ContainsFunc(o.Actions, func(a incidents.ActionRef) bool {
		return a.Status != incidents.ActionPlanned
	}):
		o.State = KillPlanned
	}
	if m := k.cfg.Metrics; m != nil {
		m.Kills.WithLabelValues(string(o.State)).Inc()
	}
	k.cfg.Log.Warn("kill-vendor ran", zap.String("vendor", o.Vendor), zap.String("order", o.ID), zap.String("state", string(o.State)),
		zap.String("approved_by", approver), zap.Float64("apply_seconds", o.ApplySeconds), zap.Error(runErr))
	return o, errors.Join(runErr, k.save(ctx, o))
}

// handle passes o through the responder: a kill_vendor detection on the vendor's key
// with o's decision, carried out on approver's authority ("" records it only).
func (k *Killer) handle(ctx context.Context, o *KillOrder, approver string, ord *order) error {
	if ord == nil {
		ord = &order{vendor: k.cfg.Inventory.Vendor(o.Vendor)}
	}
	now := k.cfg.Clock.Now()
	stage := "ordered"
	reason := fmt.Sprintf("kill-vendor ordered by %s: %s", o.RequestedBy, o.Reason)
	if approver != "" {
		stage = "approved-" + approver
		reason = fmt.Sprintf("kill-vendor ordered by %s, approved by %s: %s", o.RequestedBy, approver, o.Reason)
	} else if k.cfg.Settings.SecondApprover {
		reason += " (waiting for a second approver)"
	}
	d := detectors.Detection{
		ID:       "det-" + o.ID + "-" + hashOf(stage + now.String())[:8],
		Detector: KindKillVendor, Key: detectors.Key{Vendor: o.Vendor}, Severity: detectors.SeverityCritical, Score: 1,
		FirstAnomalousAt: o.RequestedAt, DetectedAt: now, Window: detectors.Window{Start: o.RequestedAt, End: now},
		Reason: reason,
	}
	ord.approver = approver
	ord.kill = incidents.KillNote{Order: o.ID, RequestedBy: o.RequestedBy, RequestedAt: o.RequestedAt, ApprovedBy: approver,
		ApprovedAt: o.ApprovedAt, Reason: o.Reason, Credentials: len(ord.result.Decision.Actions)}
	if approver == "" {
		ord.kill.Credentials = len(o.Plan.Steps)
	}
	ord.result.ID = "dec-" + d.ID[len("det-"):]
	ord.result.DetectionID, ord.result.Revision, ord.result.Matched = d.ID, KillPlaybook, []string{KillPlaybook}
	ord.result.Decision.Reason, ord.result.Decision.Severity = reason, "critical"
	inner := ord.done
	ord.done = func(in *incidents.Incident) {
		o.Incident = in.ID
		if inner != nil {
			inner(in)
		}
	}
	return k.r.handle(ctx, d, ord)
}

// notPaused refuses a kill while automation is paused.
func (k *Killer) notPaused(ctx context.Context) error {
	st, err := k.cfg.Runner.Control().Status(ctx)
	if err != nil {
		return fmt.Errorf("pipeline: read the pause switch: %w", err)
	}
	if st.Paused.On {
		return fmt.Errorf("%w (paused by %s: %s)", ErrPaused, st.Paused.By, st.Paused.Reason)
	}
	return nil
}

// save stores o whatever its revision (the order's own runs are serialised by its state).
func (k *Killer) save(ctx context.Context, o KillOrder) error {
	for range 5 {
		_, rev, err := k.cfg.Store.Get(ctx, actions.KillsBucket, orderKey(o.ID))
		if err != nil {
			return fmt.Errorf("pipeline: save kill order: %w", err)
		}
		if _, err = k.cfg.Store.Update(ctx, actions.KillsBucket, orderKey(o.ID), mustJSON(o), rev); !errors.Is(err, actions.ErrStale) {
			return err
		}
	}
	return fmt.Errorf("pipeline: save kill order %s: %w", o.ID, actions.ErrStale)
}

// note records a step of an order in the ledger.
func (k *Killer) note(ctx context.Context, o KillOrder, stage string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = k.cfg.Ledger.Append(ctx, ledger.Entry{Type: ledger.TypeIncident, ID: o.ID + "/" + stage, Incident: o.Incident,
		Time: k.cfg.Clock.Now(), Payload: b})
	return err
}

// restorable is c without what identifies one token, secret-id or lease (restore needs
// names only; an entity keeps the accessor of a token of it, which proves it enabled).
func restorable(c killswitch.Credential) killswitch.Credential {
	if c.Kind != killswitch.CredEntity {
		c.Accessor = ""
	}
	c.SecretIDAccessor, c.LeaseID = "", ""
	return c
}

func orderID(vendor string, at time.Time) string {
	return "kill-" + hashOf(vendor + "\x00" + at.Format(time.RFC3339Nano))[:12]
}

func orderKey(id string) string { return "order." + id }

func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// mustJSON encodes a value that always encodes.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
