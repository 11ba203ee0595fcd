package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/internal/metrics"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Decider evaluates the playbooks.
type Decider interface {
	Evaluate(ctx context.Context, in playbooks.Input, opts ...playbooks.EvalOption) playbooks.Result
}

// Actor carries out decisions through the guard rails, recording every step in the
// ledger before and after it happens.
type Actor interface {
	// Act runs (or plans, or holds) the decision's actions and returns the latest state
	// of each. An error means some action's outcome is unknown (e.g. the ledger was
	// unavailable); the detection will be handled again and the idempotency claims
	// keep the actions exactly-once in effect.
	Act(ctx context.Context, req actions.Request) ([]ledger.ActionRef, error)
	// Budget reports the revocation budget for the playbooks' input.
	Budget(ctx context.Context) playbooks.Budget
}

// Recorder appends to the ledger.
type Recorder interface {
	Append(ctx context.Context, e ledger.Entry) (ledger.Record, error)
}

// IncidentStore keeps incidents (JetStream KV in the service, memory in replay).
type IncidentStore interface {
	Save(ctx context.Context, in *ledger.Incident) error
}

// EventSink publishes what happens for other automation (NATS subjects in the service).
// Failures are logged, never fatal: the ledger is the record.
type EventSink interface {
	Emit(ctx context.Context, kind, vendor string, v any) error
}

// ResponderConfig configures a Responder.
type ResponderConfig struct {
	Incidents *ledger.Incidents
	Decider   Decider
	Actor     Actor
	Ledger    Recorder
	Store     IncidentStore
	// Inventory is the vendor inventory (config.Config.Vendors).
	Inventory map[string]config.Vendor
	// Health reports telemetry health for the playbooks' input; nil reports nothing.
	Health func() playbooks.Health
	// Events receives detections, incidents, decisions and action states; may be nil.
	Events EventSink
	// Storm configures the storm guard (G7).
	Storm StormConfig
	// OnStorm is called once when a storm starts, with the vendors involved; the service
	// pauses automation and pages. May be nil.
	OnStorm func(ctx context.Context, vendors []string)
	Clock   clock.Clock
	Log     *zap.Logger
	Metrics *metrics.Metrics
}

// StormConfig bounds how many distinct vendors may escalate within a window before
// automation stops: that many at once is an attack on us, or a bug.
type StormConfig struct {
	// Vendors is the number of distinct vendors escalating within Window that makes a
	// storm. Default 10; negative disables the guard.
	Vendors int
	// Window is the sliding window. Default 5m.
	Window time.Duration
}

// Responder handles detections: it groups them into incidents, asks the playbooks when an
// incident is new or escalates, has the actor carry out the decision, and records it all.
// It is safe for concurrent use (calls are serialised: incidents are shared state).
type Responder struct {
	cfg ResponderConfig

	mu        sync.Mutex
	escalated map[string]time.Time // vendor → last escalation, for the storm guard
	storming  bool
}

// NewResponder returns a Responder.
func NewResponder(cfg ResponderConfig) *Responder {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Storm.Vendors == 0 {
		cfg.Storm.Vendors = 10
	}
	if cfg.Storm.Window <= 0 {
		cfg.Storm.Window = 5 * time.Minute
	}
	return &Responder{cfg: cfg, escalated: make(map[string]time.Time)}
}

// Incidents returns the grouping (for restoring incidents after a restart).
func (r *Responder) Incidents() *ledger.Incidents { return r.cfg.Incidents }

// Handle processes one detection. It is idempotent: a detection handled again (after a
// crash or redelivery) records nothing twice and repeats no action.
func (r *Responder) Handle(ctx context.Context, d detectors.Detection) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	if _, err := r.record(ctx, ledger.TypeDetection, d.ID, "", now, d); err != nil {
		return err
	}
	r.emit(ctx, "detection", d.Vendor, d)
	inc, esc := r.cfg.Incidents.Observe(d)
	if esc == ledger.EscalationNew {
		if r.cfg.Metrics != nil {
			r.cfg.Metrics.Incidents.Inc()
		}
		r.emit(ctx, "incident", inc.Vendor, inc)
	}
	if _, err := r.record(ctx, ledger.TypeIncident, inc.ID+"/"+d.ID, inc.ID, now, incidentNote{
		Incident: inc.ID, Detection: d.ID, Escalation: esc, State: inc.State,
	}); err != nil {
		return err
	}
	if esc == ledger.EscalationNone {
		return r.save(ctx, inc)
	}
	if r.storm(ctx, d.Vendor, now) {
		r.cfg.Log.Error("detection storm: automation paused", zap.String("vendor", d.Vendor))
	}

	var vendor *config.Vendor
	if v, ok := r.cfg.Inventory[d.Vendor]; ok {
		vendor = &v
	}
	in := playbooks.Input{
		Detection: d,
		Incident:  summary(inc),
		Vendor:    playbooks.NewVendorView(d.Vendor, vendor),
		Now:       now,
	}
	if r.cfg.Actor != nil {
		in.Budget = r.cfg.Actor.Budget(ctx)
	}
	if r.cfg.Health != nil {
		in.TelemetryHealth = r.cfg.Health()
	}
	res := r.cfg.Decider.Evaluate(ctx, in)
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.DecisionLatency.Observe(res.EvalDuration.Seconds())
		r.cfg.Metrics.Decisions.WithLabelValues(outcome(res)).Inc()
	}
	if _, err := r.record(ctx, ledger.TypeDecision, res.ID, inc.ID, now, res); err != nil {
		return err
	}
	r.cfg.Incidents.Decided(inc, ledger.DecisionRef{
		ID: res.ID, At: now, Revision: res.Revision, Playbooks: res.Matched, Reason: res.Decision.Reason,
		Severity: res.Decision.Severity, Escalated: res.Escalated, Trigger: d.ID,
	})
	r.emit(ctx, "decision", d.Vendor, res)
	var actErr error
	if r.cfg.Actor != nil && len(res.Decision.Actions) > 0 {
		var states []ledger.ActionRef
		before := inc.ContainedAt
		states, actErr = r.cfg.Actor.Act(ctx, actions.Request{Incident: inc.Clone(), Detection: d, Result: res, Vendor: vendor})
		for _, s := range states {
			r.cfg.Incidents.ActionUpdate(inc, s, playbooks.ActionType(s.Type).Destructive())
			if r.cfg.Metrics != nil {
				r.cfg.Metrics.Actions.WithLabelValues(s.Type, string(s.Status)).Inc()
			}
			r.emit(ctx, "action", d.Vendor, s)
		}
		if r.cfg.Metrics != nil && before == nil && inc.ExposureWindowSeconds != nil && inc.ContainedAt != nil {
			r.cfg.Metrics.ExposureWindow.Observe(*inc.ExposureWindowSeconds)
			r.cfg.Metrics.RevocationLatency.Observe(inc.ContainedAt.Sub(now).Seconds())
		}
	}
	return errors.Join(actErr, r.save(ctx, inc))
}

// ActionUpdate records a later change of one of an incident's actions (a held action
// approved and run, rejected or expired) if the incident is still current.
func (r *Responder) ActionUpdate(ctx context.Context, incident, vendor, credential string, ref ledger.ActionRef) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.cfg.Incidents.Current(detectors.Key{Vendor: vendor, Credential: credential})
	if !ok || in.ID != incident {
		r.cfg.Log.Info("action update for an incident no longer current", zap.String("incident", incident), zap.String("action", ref.ID))
		return nil
	}
	before := in.ContainedAt
	r.cfg.Incidents.ActionUpdate(in, ref, playbooks.ActionType(ref.Type).Destructive())
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.Actions.WithLabelValues(ref.Type, string(ref.Status)).Inc()
		if before == nil && in.ExposureWindowSeconds != nil {
			r.cfg.Metrics.ExposureWindow.Observe(*in.ExposureWindowSeconds)
		}
	}
	r.emit(ctx, "action", vendor, ref)
	return r.save(ctx, in)
}

// incidentNote is the ledger payload of an incident record.
type incidentNote struct {
	Incident   string               `json:"incident"`
	Detection  string               `json:"detection"`
	Escalation ledger.Escalation    `json:"escalation,omitempty"`
	State      ledger.IncidentState `json:"state"`
}

func (r *Responder) record(ctx context.Context, t ledger.RecordType, id, incident string, at time.Time, v any) (ledger.Record, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("pipeline: encode %s %s: %w", t, id, err)
	}
	return r.cfg.Ledger.Append(ctx, ledger.Entry{Type: t, ID: id, Incident: incident, Time: at, Payload: b})
}

func (r *Responder) save(ctx context.Context, inc *ledger.Incident) error {
	if r.cfg.Store == nil {
		return nil
	}
	return r.cfg.Store.Save(ctx, inc)
}

func (r *Responder) emit(ctx context.Context, kind, vendor string, v any) {
	if r.cfg.Events == nil {
		return
	}
	if err := r.cfg.Events.Emit(ctx, kind, vendor, v); err != nil {
		r.cfg.Log.Warn("event not published", zap.String("kind", kind), zap.Error(err))
	}
}

// storm records an escalation for vendor and reports whether a storm just started.
func (r *Responder) storm(ctx context.Context, vendor string, now time.Time) bool {
	if r.cfg.Storm.Vendors < 0 {
		return false
	}
	r.escalated[vendor] = now
	var vendors []string
	for v, t := range r.escalated {
		if now.Sub(t) > r.cfg.Storm.Window {
			delete(r.escalated, v)
			continue
		}
		vendors = append(vendors, v)
	}
	if len(vendors) < r.cfg.Storm.Vendors {
		r.storming = false
		return false
	}
	if r.storming {
		return false
	}
	r.storming = true
	slices.Sort(vendors)
	if r.cfg.OnStorm != nil {
		r.cfg.OnStorm(ctx, vendors)
	}
	return true
}

// summary is the playbooks' view of an incident.
func summary(inc *ledger.Incident) playbooks.IncidentSummary {
	s := playbooks.IncidentSummary{
		ID:               inc.ID,
		Detections:       playbooks.DetectionCounts{Count: inc.DetectionCount, Kinds: map[detectors.Kind]int{}},
		FirstAnomalousAt: inc.FirstAnomalousAt,
		Actions:          []playbooks.ActionRecord{},
	}
	for _, d := range inc.Detections {
		s.Detections.Kinds[d.Detector]++
	}
	for _, a := range inc.Actions {
		s.Actions = append(s.Actions, playbooks.ActionRecord{
			Type: playbooks.ActionType(a.Type), Credential: a.Credential, Status: playbookStatus(a.Status), At: a.At,
		})
	}
	return s
}

// playbookStatus maps an action status onto the five the playbooks know.
func playbookStatus(s ledger.ActionStatus) playbooks.ActionStatus {
	switch s {
	case ledger.ActionPlanned, ledger.ActionSkipped:
		return playbooks.StatusPlanned
	case ledger.ActionHeld:
		return playbooks.StatusHeld
	case ledger.ActionApplied, ledger.ActionUnverified:
		return playbooks.StatusApplied
	case ledger.ActionVerified:
		return playbooks.StatusVerified
	}
	return playbooks.StatusFailed
}

func outcome(res playbooks.Result) string {
	switch {
	case res.Escalated:
		return "escalated"
	case len(res.Decision.Actions) == 0:
		return "no_action"
	}
	return "act"
}
