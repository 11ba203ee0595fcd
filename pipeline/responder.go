package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
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

// Decider evaluates the playbooks (playbooks.Engine).
type Decider interface {
	Evaluate(ctx context.Context, in playbooks.Input, opts ...playbooks.EvalOption) playbooks.Result
}

// Actor carries out decisions through the guard rails (actions.Runner), recording every
// step in the ledger before and after it happens.
type Actor interface {
	// Act runs (or plans, or holds) the decision's actions and returns the latest state
	// of each. An error means some action's outcome is unknown (e.g. the ledger was
	// unavailable); the detection will be handled again and the idempotency claims
	// keep the actions exactly-once in effect.
	Act(ctx context.Context, req actions.Request) ([]incidents.ActionRef, error)
	// Budget reports the revocation budget for the playbooks' input.
	Budget(ctx context.Context) playbooks.Budget
}

// IncidentStore keeps the latest state of every incident (incidents/natskv in the
// service, incidents.Memory in replay).
type IncidentStore interface {
	Save(ctx context.Context, in *incidents.Incident) error
}

// EventSink publishes what happens for other automation (NATS subjects in the service).
// Failures are logged and counted, never fatal: the ledger is the record.
type EventSink interface {
	Emit(ctx context.Context, kind, vendor string, v any) error
}

// ResponderConfig configures a Responder.
type ResponderConfig struct {
	// Incidents configures grouping (a Book per vendor).
	Incidents incidents.Settings
	// Decider evaluates the playbooks.
	Decider Decider
	// Actor carries decisions out; nil records decisions without acting.
	Actor Actor
	// Ledger records detections, incident changes and decisions.
	Ledger ledger.Appender
	// Store keeps incidents; nil keeps them in memory only.
	Store IncidentStore
	// Inventory is the vendor inventory.
	Inventory killswitch.Inventory
	// Health reports telemetry health for the playbooks' input; nil reports nothing.
	Health func() playbooks.Health
	// Events receives detections, incidents, decisions and action states; may be nil.
	Events EventSink
	// Arbiter, when several instances respond (a cluster), decides which incident is a
	// key's current one when a detection would open a new one; nil in one process, where
	// the Book alone decides.
	Arbiter Arbiter
	// Storm is the storm guard (G7): LocalStorms in one process, cluster.Storm across the
	// instances of a cluster; nil disables it (replay shows every incident).
	Storm StormCounter
	// OnStorm is called when a storm starts, when a vendor joins it and when a vendor of
	// it escalates again, before that vendor's decision is acted on: the service holds
	// the destructive actions of the storm's vendors until its Until, and pages. May be
	// nil.
	OnStorm func(ctx context.Context, storm incidents.Storm)
	// Pager pages a human when a destructive action ends unverified (applied but not
	// proven dead) or failed; nil pages nobody (replay).
	Pager Pager
	// Holds are the false-positive holds of restored incidents (Killer): a detection of a
	// held kind on a held key has its destructive actions wait for approval. May be nil.
	Holds interface {
		Held(ctx context.Context, key detectors.Key, kind detectors.Kind, now time.Time) (Hold, bool)
	}
	// WatchRevoked is how long the credential of a contained incident stays watched for
	// use after revocation once the incident closed (it is watched while the incident is
	// current). Default DefaultWatchRevoked; negative: only while the incident is current.
	WatchRevoked time.Duration
	// Clock tells the time of decisions and records (event time in replay).
	Clock   clock.Clock
	Log     *zap.Logger
	Metrics *metrics.Metrics
}

// Responder handles detections: it groups them into incidents, asks the playbooks when
// an incident is new or escalates, has the actor carry out the decision, and records it
// all. Work is partitioned by vendor, the key a cluster partitions by: one vendor's
// detections are handled one at a time and in order, while different vendors proceed
// in parallel — a vendor whose Vault calls hang never holds up another. A vendor's
// incident state is changed only by the goroutine holding that vendor's turn, and
// updates arriving meanwhile (a held action approved over the API) are queued, never
// waited for. It is safe for concurrent use.
type Responder struct {
	cfg ResponderConfig

	mu      sync.Mutex
	vendors map[string]*vendorState

	revoked *revoked // what the incidents revoked, for use_after_revocation (revoked.go)
}

// vendorState is one vendor's partition: its incidents and its turn.
type vendorState struct {
	turn sync.Mutex // held while the vendor's incidents change (never across vendors)
	book *incidents.Book

	qmu     sync.Mutex
	pending []actions.Update // updates waiting for the vendor's turn
}

// Arbiter decides across instances which incident is the current one of a key, so that
// two instances handling one vendor during a partition move never open two incidents
// (hence two claims) for it.
type Arbiter interface {
	// Claim makes in (just opened) its key's current incident, unless another open or
	// contained incident holds the key: then it returns that one, as stored.
	Claim(ctx context.Context, in *incidents.Incident) (*incidents.Incident, error)
}

// StormCounter counts escalations across vendors and says when a storm starts or
// grows (see incidents.StormGuard.Escalated).
type StormCounter interface {
	Escalated(ctx context.Context, vendor string, counts bool, now time.Time) (incidents.Storm, bool)
}

// LocalStorms is the storm guard of one process.
type LocalStorms struct{ Guard *incidents.StormGuard }

// Escalated implements StormCounter.
func (l LocalStorms) Escalated(_ context.Context, vendor string, counts bool, now time.Time) (incidents.Storm, bool) {
	return l.Guard.Escalated(vendor, counts, now)
}

// NewResponder returns a Responder.
func NewResponder(cfg ResponderConfig) *Responder {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Responder{cfg: cfg, vendors: make(map[string]*vendorState), revoked: newRevoked(cfg.WatchRevoked, cfg.Incidents.Cooldown)}
}

// vendor returns vendor's partition, creating it.
func (r *Responder) vendor(name string) *vendorState {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.vendors[name]
	if !ok {
		v = &vendorState{book: incidents.NewBook(r.cfg.Incidents)}
		r.vendors[name] = v
	}
	return v
}

// release ends a vendor's turn, first applying the updates queued during it. An update
// queued after the last drain but before the unlock is applied by the next turn, or by
// its own ActionUpdate when it finds the turn free.
func (r *Responder) release(ctx context.Context, vendor string, v *vendorState) {
	for {
		r.drain(ctx, vendor, v)
		v.turn.Unlock()
		v.qmu.Lock()
		more := len(v.pending) > 0
		v.qmu.Unlock()
		if !more || !v.turn.TryLock() {
			return
		}
	}
}

// Restore makes an incident loaded from storage current again (after a restart).
func (r *Responder) Restore(in *incidents.Incident) {
	v := r.vendor(in.Vendor)
	v.turn.Lock()
	v.book.Restore(in)
	r.revoked.follow(in, r.cfg.Clock.Now())
	v.turn.Unlock()
}

// Reload replaces the vendor's current incidents with ins (loaded from storage): in a
// cluster, the vendor's partition was handled by another instance until now.
func (r *Responder) Reload(vendor string, ins []*incidents.Incident) {
	v := r.vendor(vendor)
	v.turn.Lock()
	v.book = incidents.NewBook(r.cfg.Incidents)
	for _, in := range ins {
		v.book.Restore(in)
	}
	r.revoked.reload(vendor, ins, r.cfg.Clock.Now())
	v.turn.Unlock()
}

// Forget drops the incidents of the vendors keep does not accept (in a cluster, their
// partition moved to another instance); a detection of theirs handled later starts
// from what storage holds then (see Reload).
func (r *Responder) Forget(keep func(vendor string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.vendors {
		if !keep(name) {
			delete(r.vendors, name)
		}
	}
	r.revoked.forget(keep)
}

// Vendors returns the names of the vendors the responder holds incidents or turns for.
func (r *Responder) Vendors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.vendors))
	for name := range r.vendors {
		out = append(out, name)
	}
	return out
}

// Current returns a copy of the current (open or contained) incident of key, if any.
// It waits for the vendor's turn.
func (r *Responder) Current(key detectors.Key) (*incidents.Incident, bool) {
	v := r.vendor(key.Vendor)
	v.turn.Lock()
	defer v.turn.Unlock()
	in, ok := v.book.Current(key)
	if !ok {
		return nil, false
	}
	return in.Clone(), true
}

// Handle processes one detection. It is idempotent: a detection handled again (after a
// crash or redelivery) records nothing twice and repeats no action.
//
// Its records (detection, incident, decision) are queued in the ledger without waiting:
// the action's intent, queued after them, is stored only once they are, and Handle
// returns only when every record it queued is stored (a detection is acknowledged only
// then).
func (r *Responder) Handle(ctx context.Context, d detectors.Detection) error {
	return r.handle(ctx, d, nil)
}

// order is a decision a human took in place of the playbooks' (kill-vendor): its
// detection joins or opens the vendor's incident like any other, and its result is
// recorded as the decision and carried out by the Actor's Command on approver's
// authority (nothing is carried out while approver is empty: it waits for one).
type order struct {
	result   playbooks.Result
	vendor   *killswitch.Vendor // the inventory entry, with the credentials enumerated beyond it
	approver string
	kill     incidents.KillNote
	// done receives a copy of the incident once the order was carried out.
	done func(in *incidents.Incident)
}

// Commander carries out a decision a human commanded and approved (actions.Runner).
type Commander interface {
	Command(ctx context.Context, req actions.Request, approver string) ([]incidents.ActionRef, error)
}

func (r *Responder) handle(ctx context.Context, d detectors.Detection, o *order) (err error) {
	v := r.vendor(d.Vendor)
	v.turn.Lock()
	defer r.release(ctx, d.Vendor, v)
	var waits []func() error
	record := func(t ledger.RecordType, id, incident string, at time.Time, payload any) {
		waits = append(waits, r.queue(ctx, t, id, incident, at, payload))
	}
	defer func() {
		for _, w := range waits {
			err = errors.Join(err, w())
		}
	}()
	now := r.cfg.Clock.Now()
	record(ledger.TypeDetection, d.ID, "", now, d)
	r.emit(ctx, "detection", d.Vendor, d)
	obs := v.book.Observe(d)
	if obs.Escalation == incidents.EscalationNew && r.cfg.Arbiter != nil {
		holder, err := r.cfg.Arbiter.Claim(ctx, obs.Incident)
		if err != nil {
			// The detection is handed back and handled again: forget the incident it
			// opened here (the one its cooldown closed stays closed, and is stored so).
			v.book.Forget(d.Key)
			if obs.Closed != nil {
				err = errors.Join(err, r.closed(ctx, obs.Closed, now))
			}
			return fmt.Errorf("pipeline: claim the incident of %s: %w", d.Key, err)
		}
		if holder.ID != obs.Incident.ID {
			// Another instance opened the key's incident: this detection joins it.
			r.cfg.Log.Info("the key's incident was opened by another instance; joining it",
				zap.String("incident", holder.ID), zap.String("detection", d.ID))
			v.book.Replace(holder)
			closed := obs.Closed
			obs = v.book.Observe(d)
			obs.Closed = closed
		}
	}
	inc := obs.Incident
	r.afterRevocation(ctx, d, inc, obs.Escalation)
	if obs.Closed != nil {
		if err := r.closed(ctx, obs.Closed, now); err != nil {
			return err
		}
	}
	if obs.Escalation == incidents.EscalationNew {
		if r.cfg.Metrics != nil {
			r.cfg.Metrics.Incidents.Inc()
		}
		r.emit(ctx, "incident", inc.Vendor, inc)
	}
	record(ledger.TypeIncident, inc.ID+"/"+d.ID, inc.ID, now, incidentNote{
		Incident: inc.ID, Detection: d.ID, Escalation: obs.Escalation, State: inc.State,
	})
	if o != nil {
		return r.command(ctx, v, d, inc, o, now, record)
	}
	// A detection delivered again after carrying out its decision failed (the ledger or
	// the control plane unavailable for a moment) is decided and carried out again: the
	// decision's and the actions' IDs are the same, and the actions' claims make
	// whatever was done before count once.
	_, resume := inc.Unfinished(d.ID)
	if obs.Escalation == incidents.EscalationNone && !resume {
		return r.save(ctx, inc)
	}
	vendor := r.cfg.Inventory.Vendor(d.Vendor)
	if r.cfg.Storm != nil && !resume {
		if storm, changed := r.cfg.Storm.Escalated(ctx, d.Vendor, stormCounts(d, vendor != nil), now); changed {
			r.cfg.Log.Error("detection storm: destructive actions of its vendors held",
				zap.String("vendor", d.Vendor), zap.Strings("vendors", storm.Vendors), zap.Time("until", storm.Until))
			if r.cfg.OnStorm != nil {
				r.cfg.OnStorm(ctx, storm)
			}
		}
	}
	in := playbooks.Input{
		Detection: d,
		Incident:  playbooks.SummaryOf(inc),
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
	if r.cfg.Holds != nil && !res.Decision.RequiresApproval && slices.ContainsFunc(res.Decision.Actions, destructive) {
		if h, ok := r.cfg.Holds.Held(ctx, d.Key, d.Detector, now); ok {
			res.Decision.RequiresApproval = true
			res.Decision.Reason += " — " + h.Note()
		}
	}
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.DecisionLatency.Observe(res.EvalDuration.Seconds())
		r.cfg.Metrics.Decisions.WithLabelValues(outcome(res)).Inc()
	}
	record(ledger.TypeDecision, res.ID, inc.ID, now, res)
	v.book.Decided(inc, incidents.DecisionRef{
		ID: res.ID, At: now, Revision: res.Revision, Playbooks: res.Matched, Reason: res.Decision.Reason,
		Severity: res.Decision.Severity, Escalated: res.Escalated, Trigger: d.ID,
	})
	r.emit(ctx, "decision", d.Vendor, res)
	var actErr error
	if r.cfg.Actor != nil && len(res.Decision.Actions) > 0 {
		var states []incidents.ActionRef
		states, actErr = r.cfg.Actor.Act(ctx, actions.Request{Incident: inc.Clone(), Detection: d, Result: res, Vendor: vendor})
		for _, s := range states {
			r.actionUpdate(ctx, v, inc, s, now)
		}
	}
	inc.Finished(d.ID, actErr == nil)
	return errors.Join(actErr, r.save(ctx, inc))
}

// command records an order's decision for inc and carries it out (the caller holds
// the vendor's turn).
func (r *Responder) command(ctx context.Context, v *vendorState, d detectors.Detection, inc *incidents.Incident, o *order,
	now time.Time, record func(t ledger.RecordType, id, incident string, at time.Time, payload any)) error {
	kill := o.kill
	inc.Kill = &kill
	res := o.result
	record(ledger.TypeDecision, res.ID, inc.ID, now, res)
	v.book.Decided(inc, incidents.DecisionRef{
		ID: res.ID, At: now, Revision: res.Revision, Playbooks: res.Matched, Reason: res.Decision.Reason,
		Severity: res.Decision.Severity, Trigger: d.ID,
	})
	r.emit(ctx, "decision", d.Vendor, res)
	var actErr error
	if cmd, ok := r.cfg.Actor.(Commander); ok && o.approver != "" {
		var states []incidents.ActionRef
		states, actErr = cmd.Command(ctx, actions.Request{Incident: inc.Clone(), Detection: d, Result: res, Vendor: o.vendor}, o.approver)
		// Every state is in the incident before any is applied: the whole plan is judged
		// at once (a kill contains only when all of it is verified).
		for _, s := range states {
			if i := slices.IndexFunc(inc.Actions, func(x incidents.ActionRef) bool { return x.ID == s.ID }); i >= 0 {
				inc.Actions[i] = s
			} else {
				inc.Actions = append(inc.Actions, s)
			}
		}
		for _, s := range states {
			r.actionUpdate(ctx, v, inc, s, now)
		}
	} else if o.approver != "" {
		actErr = killswitch.Permanent(killswitch.ReasonMisconfigured, errors.New("pipeline: nothing can carry out a command here"))
	}
	if o.done != nil {
		o.done(inc.Clone())
	}
	return errors.Join(actErr, r.save(ctx, inc))
}

func destructive(a playbooks.Action) bool { return a.Type.Destructive() }

// restored records a restore on in: the current incident when in is current (under
// the vendor's turn), else the stored one.
func (r *Responder) restored(ctx context.Context, in *incidents.Incident, note incidents.RestoreNote) error {
	v := r.vendor(in.Vendor)
	v.turn.Lock()
	defer r.release(ctx, in.Vendor, v)
	if cur, ok := v.book.Current(in.Key()); ok && cur.ID == in.ID {
		in = cur
	}
	in.FalsePositive, in.Restore = note.Complete, &note
	r.emit(ctx, "incident", in.Vendor, in)
	return r.save(ctx, in)
}

// actionUpdate applies one action state to inc (held by the vendor's turn).
func (r *Responder) actionUpdate(ctx context.Context, v *vendorState, inc *incidents.Incident, ref incidents.ActionRef, decidedAt time.Time) {
	contained := v.book.ActionUpdate(inc, ref)
	if m := r.cfg.Metrics; m != nil {
		m.Actions.WithLabelValues(string(ref.Type), string(ref.Status)).Inc()
		if contained {
			m.ExposureWindow.Observe(*inc.ExposureWindowSeconds)
			if !decidedAt.IsZero() {
				m.RevocationLatency.Observe(inc.ContainedAt.Sub(decidedAt).Seconds())
			}
		}
	}
	r.emit(ctx, "action", inc.Vendor, ref)
	if r.cfg.Pager != nil && ref.Type.Destructive() && (ref.Status == incidents.ActionUnverified || ref.Status == incidents.ActionFailed) {
		page := map[string]any{"page": true, "incident": inc.ID, "action": ref,
			"reason": fmt.Sprintf("%s on %s is %s: a human must check the credential", ref.Type, inc.Vendor, ref.Status)}
		if err := r.cfg.Pager.Page(ctx, inc.Vendor, page); err != nil {
			r.cfg.Log.Error("could not page", zap.String("incident", inc.ID), zap.String("action", ref.ID), zap.Error(err))
		}
	}
}

// Pager tells a human that something needs them now.
type Pager interface {
	Page(ctx context.Context, vendor string, v any) error
}

// ActionUpdate records a later change of one of an incident's actions (a held action
// approved and run, rejected or expired) if the incident is still current. It never
// waits for the vendor's turn: when another goroutine holds it (the vendor is being
// handled), the update is queued and applied before that turn ends.
func (r *Responder) ActionUpdate(ctx context.Context, u actions.Update) {
	v := r.vendor(u.Vendor)
	v.qmu.Lock()
	v.pending = append(v.pending, u)
	v.qmu.Unlock()
	if v.turn.TryLock() {
		r.release(ctx, u.Vendor, v)
	}
}

// drain applies the queued action updates (the caller holds the vendor's turn).
func (r *Responder) drain(ctx context.Context, vendor string, v *vendorState) {
	v.qmu.Lock()
	ups := v.pending
	v.pending = nil
	v.qmu.Unlock()
	for _, u := range ups {
		in, ok := v.book.Current(detectors.Key{Vendor: vendor, Credential: u.Credential})
		if !ok || in.ID != u.Incident {
			r.cfg.Log.Info("action update for an incident no longer current", zap.String("incident", u.Incident), zap.String("action", u.Ref.ID))
			continue
		}
		r.actionUpdate(ctx, v, in, u.Ref, time.Time{})
		if err := r.save(ctx, in); err != nil {
			r.cfg.Log.Error("incident update not saved", zap.String("incident", in.ID), zap.Error(err))
		}
	}
}

// Expire closes the incidents quiet for longer than the cooldown as of now, records and
// saves them, and returns how many it closed.
func (r *Responder) Expire(ctx context.Context, now time.Time) (int, error) {
	r.mu.Lock()
	vendors := make(map[string]*vendorState, len(r.vendors))
	maps.Copy(vendors, r.vendors)
	r.mu.Unlock()
	n := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(vendors)) { // in order: replay's ledger is the same every time
		v := vendors[name]
		v.turn.Lock()
		for _, in := range v.book.Expire(now) {
			n++
			if err := r.closed(ctx, in, now); err != nil {
				errs = append(errs, err)
			}
		}
		r.release(ctx, name, v)
	}
	r.revoked.expire(now)
	return n, errors.Join(errs...)
}

// closed records and saves an incident that just closed.
func (r *Responder) closed(ctx context.Context, in *incidents.Incident, now time.Time) error {
	if err := r.record(ctx, ledger.TypeIncident, in.ID+"/closed", in.ID, now, incidentNote{Incident: in.ID, State: in.State}); err != nil {
		return err
	}
	r.emit(ctx, "incident", in.Vendor, in)
	return r.save(ctx, in)
}

// incidentNote is the ledger payload of an incident record.
type incidentNote struct {
	Incident   string               `json:"incident"`
	Detection  string               `json:"detection,omitempty"`
	Escalation incidents.Escalation `json:"escalation,omitempty"`
	State      incidents.State      `json:"state"`
}

func (r *Responder) record(ctx context.Context, t ledger.RecordType, id, incident string, at time.Time, v any) error {
	return r.queue(ctx, t, id, incident, at, v)()
}

// queue places a record in the ledger's chain now and returns the wait for it to be
// stored (see ledger.Later).
func (r *Responder) queue(ctx context.Context, t ledger.RecordType, id, incident string, at time.Time, v any) (wait func() error) {
	b, err := json.Marshal(v)
	if err != nil {
		err = killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("pipeline: encode %s %s: %w", t, id, err))
		return func() error { return err }
	}
	return ledger.Later(ctx, r.cfg.Ledger, ledger.Entry{Type: t, ID: id, Incident: incident, Time: at, Payload: b})
}

func (r *Responder) save(ctx context.Context, inc *incidents.Incident) error {
	r.revoked.follow(inc, r.cfg.Clock.Now())
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
		if r.cfg.Metrics != nil {
			r.cfg.Metrics.EventsDropped.WithLabelValues(kind).Inc()
		}
		r.cfg.Log.Warn("event not published", zap.String("kind", kind), zap.Error(err))
	}
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

// stormCounts says whether an escalation on detection d counts toward a storm: its
// vendor is in the inventory (known), or the detection can only come from a vendor with
// a history (spike, sustained and new destination fire only after the vendor's learning
// period, counted in observed history; dormant only after observed idleness). Silence
// never counts: it is an alert, never a revocation, and any name can go silent.
func stormCounts(d detectors.Detection, known bool) bool {
	switch d.Detector {
	case detectors.KindSilence, detectors.KindUseAfterRevocation:
		// use_after_revocation follows our own revocations: never a storm of new ones.
		return false
	case detectors.KindSpike, detectors.KindSustained, detectors.KindNewDestination, detectors.KindDormant:
		return true
	}
	return known
}
