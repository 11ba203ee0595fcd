// Package replay drives recorded telemetry through the same pipeline as the service
// (detectors, incidents, playbooks, guard rails and actions) on a virtual clock that
// follows event time, so days of telemetry replay in seconds and the same input always
// gives byte-identical reports. It writes the JSON report (a stable contract, see
// DESIGN.md) and a self-contained HTML report, and can compare two playbook sets on the
// same telemetry.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/internal/pace"
	"github.com/killswitch-dev/killswitch/internal/pipeline"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
	"go.uber.org/zap"
)

// Source feeds recorded telemetry to a handler in event order (as recorded).
type Source interface {
	Run(ctx context.Context, h telemetry.Handler) error
}

// ActorFactory builds the actor (guard rails and executors) for a replay, on the
// replay's virtual clock and ledger.
type ActorFactory func(clk clock.Clock, led pipeline.Recorder) (pipeline.Actor, error)

// Options configures a replay.
type Options struct {
	// Config is the team's configuration; the zero Config works (vendors and credentials
	// come from the telemetry).
	Config config.Config
	// Playbooks evaluates decisions.
	Playbooks pipeline.Decider
	// Baseline, when set, is evaluated on the same inputs and every decision that differs
	// is listed in the report's flips (shadow comparison).
	Baseline pipeline.Decider
	// NewActor builds the actor; nil records decisions without acting. PlanActions is
	// the actor of a replay without a Vault.
	NewActor ActorFactory
	// PlannedContains counts a planned revocation as containment (without a Vault the
	// report measures what would have happened).
	PlannedContains bool
	// Speed replays at Speed × real time (for live exercises); 0 is as fast as possible.
	Speed float64
	// Events receives detections, incidents, decisions and action states as they
	// happen (e.g. published to NATS in a live exercise); may be nil.
	Events pipeline.EventSink
	// Progress receives a progress line a few times a second; nil is quiet.
	Progress io.Writer
	// Log receives warnings (bad input lines…).
	Log *zap.Logger
	// ChartKeys bounds the keys whose recent volume is kept for the report's charts.
	// Default 20 000.
	ChartKeys int
}

// PlanActions is the actor of a replay without a Vault: every guard rail runs as in the
// service (budget, breaker, cooldown, approvals, protected credentials), on the virtual
// clock and in memory, and destructive actions that pass them are planned, not applied.
func PlanActions(cfg config.Config) ActorFactory {
	return func(clk clock.Clock, led pipeline.Recorder) (pipeline.Actor, error) {
		return actions.New(cfg.Actions, actions.Options{PlanOnly: true}, actions.Deps{
			Store: actions.NewMemoryStore(), Ledger: led, Inventory: cfg.Vendors, Clock: clk,
			Sleep:       func(context.Context, time.Duration) error { return nil },
			Fingerprint: actions.NewFingerprinter([]byte("killswitch-replay")),
			Instance:    "replay",
		})
	}
}

// Run replays src and returns the report.
func Run(ctx context.Context, src Source, o Options) (*Report, error) {
	r, err := newRunner(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := src.Run(ctx, r); err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	if r.err != nil {
		return nil, r.err
	}
	return r.finish(ctx)
}

// runner is one replay in progress; it is the telemetry.Handler of the source.
type runner struct {
	o         Options
	clk       *clock.Manual
	engine    *detectors.Engine
	responder *pipeline.Responder
	ledger    *ledger.Memory
	store     *memoryStore
	flips     *flipRecorder
	pacer     *pace.Pacer
	progress  *progress
	err       error

	events      int64
	first, last time.Time
	nextTick    time.Time
	pending     []detectors.Detection
	emit        func(detectors.Detection)
	trackers    map[detectors.Key]*tracker
	charts      *charts
}

// tickEvery is how often, in event time, the processing-time checks (silence) run.
const tickEvery = time.Minute

func newRunner(ctx context.Context, o Options) (*runner, error) {
	if o.Playbooks == nil {
		return nil, errors.New("replay: no playbooks")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.ChartKeys <= 0 {
		o.ChartKeys = 20_000
	}
	clk := clock.NewManual(time.Time{})
	engine, err := detectors.New(o.Config, detectors.WithClock(clk))
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	r := &runner{
		o: o, clk: clk, engine: engine, ledger: ledger.NewMemory(), store: newMemoryStore(),
		trackers: make(map[detectors.Key]*tracker),
	}
	width := o.Config.Detectors.Interval
	if width <= 0 {
		width = 5 * time.Minute
	}
	r.charts = newCharts(o.ChartKeys, width)
	decider := o.Playbooks
	if o.Baseline != nil {
		r.flips = &flipRecorder{next: o.Playbooks, base: o.Baseline}
		decider = r.flips
	}
	var actor pipeline.Actor
	if o.NewActor != nil {
		if actor, err = o.NewActor(clk, r.ledger); err != nil {
			return nil, fmt.Errorf("replay: %w", err)
		}
	}
	r.responder = pipeline.NewResponder(pipeline.ResponderConfig{
		Incidents: ledger.NewIncidents(ledger.IncidentConfig{PlannedContains: o.PlannedContains}),
		Decider:   decider, Actor: actor, Ledger: r.ledger, Store: r.store,
		Inventory: o.Config.Vendors, Events: o.Events, Clock: clk, Log: o.Log,
		Storm: pipeline.StormConfig{Vendors: -1}, // a replay shows every incident
	})
	r.store.onSave = r.track
	r.emit = func(d detectors.Detection) { r.pending = append(r.pending, d) }
	if o.Speed > 0 {
		r.pacer = pace.New(o.Speed)
	}
	if o.Progress != nil {
		r.progress = newProgress(o.Progress)
	}
	_ = ctx
	return r, nil
}

// Handle implements telemetry.Handler: the replay's hot path.
func (r *runner) Handle(ctx context.Context, batch []telemetry.Event) error {
	for i := range batch {
		ev := &batch[i]
		if r.pacer != nil {
			if err := r.pacer.Wait(ctx, ev.Time); err != nil {
				return err
			}
		}
		if r.events == 0 {
			r.first, r.nextTick = ev.Time, ev.Time.Truncate(tickEvery).Add(tickEvery)
		}
		if ev.Time.After(r.last) {
			r.last = ev.Time
		}
		r.events++
		r.clk.Set(ev.Time)
		for !ev.Time.Before(r.nextTick) {
			r.engine.Tick(r.nextTick, r.emit)
			r.nextTick = r.nextTick.Add(tickEvery)
		}
		r.engine.Process(ev, r.emit)
		if err := r.respond(ctx); err != nil {
			r.err = err
			return telemetry.Permanent(err)
		}
		r.account(ev)
	}
	if r.progress != nil {
		r.progress.update(r.events, r.last, r.store.len())
	}
	return nil
}

// respond hands the detections of the last event to the responder.
func (r *runner) respond(ctx context.Context) error {
	if len(r.pending) == 0 {
		return nil
	}
	for _, d := range r.pending {
		if err := r.responder.Handle(ctx, d); err != nil {
			return fmt.Errorf("replay: detection %s: %w", d.ID, err)
		}
	}
	r.pending = r.pending[:0]
	return nil
}

// account counts the event's bytes for incidents and charts.
func (r *runner) account(ev *telemetry.Event) {
	cred := detectors.Key{Vendor: ev.Vendor, Credential: ev.Credential}
	vendor := detectors.Key{Vendor: ev.Vendor}
	if len(r.trackers) > 0 {
		if t := r.trackers[cred]; t != nil && ev.Credential != "" {
			t.add(r.events, ev)
		}
		if t := r.trackers[vendor]; t != nil {
			t.add(r.events, ev)
		}
	}
	r.charts.add(r.engine, cred, ev)
	if ev.Credential != "" {
		r.charts.add(r.engine, vendor, ev)
	}
}

// tracker counts the bytes of an incident's key before and after containment.
type tracker struct {
	incident    string
	openedAt    int64 // the replay's event count when the incident opened
	contained   *time.Time
	closed      bool
	before      int64 // after the first detection's crossing event, up to containment
	after       int64
	base        int64 // the first detection's anomalous bytes (up to its crossing event)
	chartSeries *series
}

func (t *tracker) add(n int64, ev *telemetry.Event) {
	if n == t.openedAt {
		return // the crossing event itself is in the detection's anomalous bytes
	}
	switch {
	case t.closed:
	case t.contained != nil && !ev.Time.Before(*t.contained):
		t.after += ev.Bytes
	default:
		t.before += ev.Bytes
	}
}

// track follows an incident's changes (the incident store's save hook).
func (r *runner) track(in *ledger.Incident) {
	key := in.Key()
	t := r.trackers[key]
	if t == nil || t.incident != in.ID {
		if t != nil {
			t.closed = true
		}
		t = &tracker{incident: in.ID, openedAt: r.events, base: in.AnomalousBytes}
		t.chartSeries = r.charts.open(key, in.ID)
		r.trackers[key] = t
		r.store.trackers[in.ID] = t
	}
	if in.ContainedAt != nil && t.contained == nil {
		c := *in.ContainedAt
		t.contained = &c
	}
	if in.State == ledger.StateClosed {
		t.closed = true
	}
}

// finish builds the report.
func (r *runner) finish(ctx context.Context) (*Report, error) {
	if r.events > 0 {
		r.engine.Tick(r.last, r.emit)
		if err := r.respond(ctx); err != nil {
			return nil, err
		}
	}
	if r.progress != nil {
		r.progress.done(r.events, r.store.len())
	}
	if _, err := ledger.Verify(r.ledger.All(ctx)); err != nil {
		return nil, fmt.Errorf("replay: ledger: %w", err)
	}
	rep := &Report{Events: r.events, Incidents: []Incident{}}
	if r.events > 0 {
		rep.FirstEvent, rep.LastEvent = ts(r.first), ts(r.last)
	}
	for _, in := range r.store.all() {
		t := r.store.trackers[in.ID]
		inc := Incident{
			ID: in.ID, Vendor: in.Vendor, Credential: in.Credential, Detectors: []string{},
			FirstAnomalousAt: ts(in.FirstAnomalousAt), DetectedAt: ts(in.DetectedAt),
			BytesBeforeContainment: t.base + t.before, BytesAfterContainment: t.after,
			Actions: []Action{},
		}
		for _, k := range in.Detectors {
			inc.Detectors = append(inc.Detectors, string(k))
		}
		if in.ContainedAt != nil {
			c := ts(*in.ContainedAt)
			inc.ContainedAt = &c
			w := round3(*in.ExposureWindowSeconds)
			inc.ExposureWindowSeconds = &w
		}
		for _, a := range in.Actions {
			inc.Actions = append(inc.Actions, Action{Type: a.Type, Target: a.Target, Status: string(a.Status), At: ts(a.At)})
		}
		rep.Incidents = append(rep.Incidents, inc)
		rep.details = append(rep.details, detail{incident: in, series: t.chartSeries})
	}
	if r.flips != nil {
		rep.Flips = r.flips.flips
		if rep.Flips == nil {
			rep.Flips = []Flip{}
		}
	}
	rep.Summary = summarize(rep)
	rep.records = r.ledger.Records()
	rep.planned = r.o.PlannedContains
	return rep, nil
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// memoryStore keeps the latest copy of every incident, in order of first appearance.
type memoryStore struct {
	byID     map[string]*ledger.Incident
	order    []string
	onSave   func(*ledger.Incident)
	trackers map[string]*tracker
}

func newMemoryStore() *memoryStore {
	return &memoryStore{byID: make(map[string]*ledger.Incident), trackers: make(map[string]*tracker)}
}

// Save implements pipeline.IncidentStore.
func (s *memoryStore) Save(_ context.Context, in *ledger.Incident) error {
	if _, ok := s.byID[in.ID]; !ok {
		s.order = append(s.order, in.ID)
	}
	s.byID[in.ID] = in.Clone()
	if s.onSave != nil {
		s.onSave(in)
	}
	return nil
}

func (s *memoryStore) len() int { return len(s.order) }

// all returns the incidents ordered by detection time, then ID.
func (s *memoryStore) all() []*ledger.Incident {
	out := make([]*ledger.Incident, 0, len(s.order))
	for _, id := range s.order {
		out = append(out, s.byID[id])
	}
	slices.SortStableFunc(out, func(a, b *ledger.Incident) int {
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

// flipRecorder evaluates both playbook sets and records where they differ.
type flipRecorder struct {
	next, base pipeline.Decider
	flips      []Flip
}

// Evaluate implements pipeline.Decider: the new playbooks decide, the baseline is compared.
func (f *flipRecorder) Evaluate(ctx context.Context, in playbooks.Input, opts ...playbooks.EvalOption) playbooks.Result {
	res := f.next.Evaluate(ctx, in, opts...)
	base := f.base.Evaluate(ctx, in)
	if a, b := summarizeDecision(base), summarizeDecision(res); a != b {
		f.flips = append(f.flips, Flip{
			Incident: in.Incident.ID, Detection: in.Detection.ID, Vendor: in.Detection.Vendor,
			Credential: in.Detection.Credential, Detector: string(in.Detection.Detector), At: ts(in.Now),
			Baseline: a, Candidate: b, BaselineReason: base.Decision.Reason, CandidateReason: res.Decision.Reason,
		})
	}
	return res
}
