// Package replay drives recorded telemetry through the very pipeline the service runs
// (detectors, incidents, playbooks, guard rails and actions; see package pipeline) on a
// virtual clock that follows event time, so days of telemetry replay in seconds and the
// same input always gives byte-identical reports. It writes the JSON report (a stable
// contract, see DESIGN.md) and a self-contained HTML report, and can compare two
// playbook sets on the same telemetry.
package replay

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
	"go.uber.org/zap"
)

// ActorFactory builds the actor (guard rails and executors) for a replay, on the
// replay's virtual clock and ledger.
type ActorFactory func(clk clock.Clock, led ledger.Appender) (pipeline.Actor, error)

// Options configures a replay.
type Options struct {
	// Detectors, Vendors, Incidents and Actions are the team's settings and vendor
	// inventory; the zero values work (vendors and credentials come from the telemetry).
	Detectors detectors.Settings
	Vendors   killswitch.Inventory
	Incidents incidents.Settings
	Actions   actions.Settings
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
	// Unmapped treats the credentials seen in the telemetry that Vendors does not list as
	// revocable in the plan, so the playbooks decide what they would do with a complete
	// inventory: they see each such credential as a Vault token (UnmappedKind), the
	// plan-only actor resolves it to a placeholder, and the report marks every action on
	// one unmapped (target UnmappedTarget) and counts them in its summary. This holds for
	// the unlisted credentials of a listed vendor too; the credentials Vendors lists are
	// decided exactly as without Unmapped. It needs PlannedContains and a plan-only actor
	// (PlanActions): an unmapped credential is never applied, and Run refuses Unmapped
	// without PlannedContains. Nothing of it reaches the detectors, the inventory or the
	// service: there an unlisted credential is never a target (killswitch.ErrNotInInventory).
	Unmapped bool
	// Speed replays at Speed × real time (for live exercises); 0 is as fast as possible.
	Speed float64
	// Events receives detections, incidents, decisions and action states as they
	// happen (e.g. published to NATS in a live exercise); may be nil.
	Events pipeline.EventSink
	// Counters are the source's counters: the telemetry health the playbooks see is
	// computed from them, as in the service. May be nil.
	Counters *telemetry.Counters
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
func PlanActions(s actions.Settings, inv killswitch.Inventory) ActorFactory {
	return func(clk clock.Clock, led ledger.Appender) (pipeline.Actor, error) {
		s.PlanOnly = true
		return actions.New(s, actions.Deps{
			Store: actions.NewMemoryStore(), Ledger: led, Inventory: inv, Clock: clk,
			Sleep:       func(context.Context, time.Duration) error { return nil },
			Fingerprint: actions.NewFingerprinter([]byte("killswitch-replay")),
			Instance:    "replay",
		})
	}
}

// Run replays src and returns the report.
func Run(ctx context.Context, src telemetry.Source, o Options) (*Report, error) {
	r, err := newRunner(o)
	if err != nil {
		return nil, err
	}
	defer r.p.Close()
	if err := src.Run(ctx, r); err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	return r.finish(ctx)
}

// runner is one replay in progress; it is the telemetry.Handler of the source, in
// front of the pipeline's ingest.
type runner struct {
	o        Options
	clk      *clock.Manual
	p        *pipeline.Pipeline
	ledger   *ledger.Memory
	store    *incidents.Memory
	tracked  map[string]*tracker // by incident ID
	flips    *flipRecorder
	pacer    *clock.Pacer
	progress *progress

	events      int64 // events handed to the pipeline
	seen        int64 // events the detectors processed (the observer's count)
	first, last time.Time
	nextTick    time.Time
	trackers    map[detectors.Key]*tracker
	charts      *charts
	unmapped    *unmapped // nil without Options.Unmapped
}

// tickEvery is how often, in event time, the processing-time checks run.
const tickEvery = time.Minute

func newRunner(o Options) (*runner, error) {
	if o.Playbooks == nil {
		return nil, errors.New("replay: no playbooks")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.ChartKeys <= 0 {
		o.ChartKeys = 20_000
	}
	if o.Unmapped && !o.PlannedContains {
		return nil, errors.New("replay: unmapped credentials can only be planned (set PlannedContains and a plan-only actor)")
	}
	r := &runner{
		o: o, clk: clock.NewManual(time.Time{}), ledger: ledger.NewMemory(), store: incidents.NewMemory(), tracked: make(map[string]*tracker),
		trackers: make(map[detectors.Key]*tracker),
	}
	width := o.Detectors.Interval
	if width <= 0 {
		width = detectors.DefaultInterval
	}
	r.charts = newCharts(o.ChartKeys, width)
	decider := o.Playbooks
	if o.Baseline != nil {
		r.flips = &flipRecorder{next: o.Playbooks, base: o.Baseline}
		decider = r.flips
	}
	if o.Unmapped {
		r.unmapped = newUnmapped(o.Vendors)
		r.charts.onNew = r.unmapped.seeKey // every credential seen is new to the charts first
		decider = unmappedDecider{next: decider, u: r.unmapped}
	}
	var actor pipeline.Actor
	if o.NewActor != nil {
		var err error
		if actor, err = o.NewActor(r.clk, r.ledger); err != nil {
			return nil, fmt.Errorf("replay: %w", err)
		}
		if r.unmapped != nil {
			actor = unmappedActor{next: actor, u: r.unmapped}
		}
	}
	inc := o.Incidents
	inc.PlannedContains = o.PlannedContains
	p, err := pipeline.New(pipeline.Config{
		Detectors: detectors.Config{Settings: o.Detectors, Vendors: o.Vendors},
		Inline:    true, // one recording, one order: byte-identical reports
		Observer:  r.observe,
		Responder: pipeline.ResponderConfig{
			Incidents: inc, Decider: decider, Actor: actor, Ledger: r.ledger, Store: tracked{Memory: r.store, track: r.track},
			Inventory: o.Vendors, Events: o.Events, Log: o.Log, // no storm guard: a replay shows every incident
			// A recording goes on whatever the replay revokes: its revoked credentials are
			// watched for use after revocation while their incident is current only, not
			// for days after it closed (each resumption of their normal traffic would
			// open an incident of its own).
			WatchRevoked: -1,
		},
		Counters: o.Counters, Virtual: r.clk, Log: o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	r.p = p
	if o.Speed > 0 {
		r.pacer = clock.NewPacer(o.Speed)
	}
	if o.Progress != nil {
		r.progress = newProgress(o.Progress)
	}
	return r, nil
}

// Handle implements telemetry.Handler: it hands the batch to the pipeline, running the
// processing-time checks whenever event time passes a tick (and, at a replay speed,
// pacing each event).
func (r *runner) Handle(ctx context.Context, batch []telemetry.Event) error {
	start := 0
	for i := range batch {
		ev := &batch[i]
		if r.events == 0 {
			r.first, r.nextTick = ev.Time, ev.Time.Truncate(tickEvery).Add(tickEvery)
		}
		if ev.Time.After(r.last) {
			r.last = ev.Time
		}
		r.events++
		tick := !ev.Time.Before(r.nextTick)
		if r.pacer == nil && !tick {
			continue
		}
		if err := r.submit(ctx, batch[start:i]); err != nil {
			return err
		}
		start = i
		for !ev.Time.Before(r.nextTick) {
			if err := r.p.Tick(ctx, r.nextTick); err != nil {
				return fmt.Errorf("replay: tick at %s: %w", r.nextTick.Format(time.RFC3339), err)
			}
			r.nextTick = r.nextTick.Add(tickEvery)
		}
		if r.pacer != nil {
			if err := r.pacer.Wait(ctx, ev.Time); err != nil {
				return err
			}
		}
	}
	if err := r.submit(ctx, batch[start:]); err != nil {
		return err
	}
	if r.progress != nil {
		r.progress.update(r.events, r.last, r.store.Len())
	}
	return nil
}

// submit hands events to the pipeline.
func (r *runner) submit(ctx context.Context, evs []telemetry.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return r.p.Ingest().Handle(ctx, evs)
}

// observe is the detectors' observer: it counts every event's bytes for the incidents
// of its keys and the charts, right after the event's detections were responded to.
func (r *runner) observe(e *detectors.Engine, ev *telemetry.Event) {
	r.seen++
	cred := detectors.Key{Vendor: ev.Vendor, Credential: ev.Credential}
	vendor := detectors.Key{Vendor: ev.Vendor}
	if len(r.trackers) > 0 {
		if t := r.trackers[cred]; t != nil && ev.Credential != "" {
			t.add(r.seen, ev)
		}
		if t := r.trackers[vendor]; t != nil {
			t.add(r.seen, ev)
		}
	}
	r.charts.add(e, cred, ev)
	if ev.Credential != "" {
		r.charts.add(e, vendor, ev)
	}
}

// tracker counts the bytes of an incident's key before and after containment, until a
// new incident opens on the key.
type tracker struct {
	incident    string
	openedAt    int64 // the number of the event being processed when the incident opened
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

// track follows an incident's changes (the incident store's save hook). An incident
// opens while the detectors process event number seen+1 (or, on a tick, before it). Its
// bytes are counted until a new incident opens on the key: an incident that closed
// because its key went quiet still says what its revocation would have stopped.
func (r *runner) track(in *incidents.Incident) {
	key := in.Key()
	t := r.trackers[key]
	if t == nil || t.incident != in.ID {
		if t != nil {
			t.closed = true
		}
		t = &tracker{incident: in.ID, openedAt: r.seen + 1, base: in.AnomalousBytes}
		t.chartSeries = r.charts.open(key, in.ID)
		r.trackers[key] = t
		r.tracked[in.ID] = t
	}
	if in.ContainedAt != nil && t.contained == nil {
		c := *in.ContainedAt
		t.contained = &c
	}
}

// finish builds the report.
func (r *runner) finish(ctx context.Context) (*Report, error) {
	if r.events > 0 {
		if err := r.p.Tick(ctx, r.last); err != nil {
			return nil, fmt.Errorf("replay: last tick: %w", err)
		}
	}
	if r.progress != nil {
		r.progress.done(r.events, r.store.Len())
	}
	if _, err := ledger.Verify(r.ledger.All(ctx)); err != nil {
		return nil, fmt.Errorf("replay: ledger: %w", err)
	}
	rep := &Report{Events: r.events, Incidents: []Incident{}}
	if r.events > 0 {
		rep.FirstEvent, rep.LastEvent = ts(r.first), ts(r.last)
	}
	all, err := r.store.Incidents(ctx)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	slices.SortFunc(all, func(a, b *incidents.Incident) int { // oldest first
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	uar := useAfterRevocation(r.ledger.Records())
	for _, in := range all {
		t := r.tracked[in.ID]
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
			inc.Actions = append(inc.Actions, Action{Type: string(a.Type), Target: a.Target, Status: string(a.Status), At: ts(a.At)})
		}
		if u := uar[in.ID]; u != nil {
			u.Bytes = max(u.Bytes, inc.BytesAfterContainment)
			u.RevokedBy = slices.DeleteFunc(u.RevokedBy, func(id string) bool { return id == in.ID })
			if len(u.RevokedBy) == 0 {
				u.RevokedBy = nil
			}
			inc.UseAfterRevocation = u
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
	rep.FleetShifts = fleetShifts(r.p.Engine().FleetShifts())
	rep.Summary = summarize(rep)
	if r.unmapped != nil {
		r.unmapped.mark(rep, all)
	}
	rep.records = r.ledger.Records()
	rep.planned = r.o.PlannedContains
	return rep, nil
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// fleetShifts converts the detectors' fleet-wide shift observations for the report.
func fleetShifts(obs []detectors.FleetShift) []FleetShift {
	out := make([]FleetShift, 0, len(obs))
	for _, o := range obs {
		f := FleetShift{At: ts(o.At), VendorsMoved: o.VendorsMoved, VendorsTotal: o.VendorsTotal, Factor: o.Factor, Discounted: o.Discounted}
		if !o.Until.IsZero() {
			u := ts(o.Until)
			f.Until = &u
		}
		out = append(out, f)
	}
	return out
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// tracked keeps the incidents in memory and tells track of every change.
type tracked struct {
	*incidents.Memory
	track func(*incidents.Incident)
}

// Save implements pipeline.IncidentStore.
func (s tracked) Save(ctx context.Context, in *incidents.Incident) error {
	s.track(in)
	return s.Memory.Save(ctx, in)
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

// useAfterRevocation gathers the use_after_revocation detections of every incident
// from the replay's ledger (detection records, and the incident records that joined
// them to an incident), in order. Bytes sums what each detection reported new.
func useAfterRevocation(records []ledger.Record) map[string]*UseAfterRevocation {
	type uarDetection struct {
		at       time.Time
		newBytes int64
		by       string
	}
	dets := map[string]uarDetection{}
	out := map[string]*UseAfterRevocation{}
	for _, rec := range records {
		switch rec.Type {
		case ledger.TypeDetection:
			var d detectors.Detection
			if json.Unmarshal(rec.Payload, &d) != nil || d.Detector != detectors.KindUseAfterRevocation {
				continue
			}
			ud := uarDetection{at: d.DetectedAt}
			if d.Revoked != nil {
				ud.newBytes, ud.by = d.Revoked.NewBytes, d.Revoked.Incident
			}
			dets[d.ID] = ud
		case ledger.TypeIncident:
			_, det, ok := strings.Cut(rec.ID, "/")
			d, isUAR := dets[det]
			if !ok || !isUAR || rec.Incident == "" {
				continue
			}
			delete(dets, det) // once per detection
			u := out[rec.Incident]
			if u == nil {
				u = &UseAfterRevocation{FirstAt: ts(d.at)}
				out[rec.Incident] = u
			}
			u.Detections++
			u.LastAt = ts(d.at)
			u.Bytes += d.newBytes
			if d.by != "" && !slices.Contains(u.RevokedBy, d.by) {
				u.RevokedBy = append(u.RevokedBy, d.by)
			}
		}
	}
	return out
}
