// Package incidents is the stage between the detectors and the playbooks: it groups
// detections into incidents, one per key (a vendor's credential, or the vendor as a
// whole) until the key has been quiet for the cooldown, says when a detection calls for a
// (new) playbook decision, follows each incident's actions, and measures its exposure
// window: first anomalous event → verified revocation.
//
// An incident's life: open (detections arriving, nothing contained) → contained (a
// destructive action was verified; the exposure window is measured) → closed (quiet for
// the cooldown, or superseded by a new incident on the same key). Incident IDs are
// deterministic (the key and the detection that opened it), so two processes that see the
// same detections make the same incidents.
//
// A Book holds the current incidents and is not safe for concurrent use: the pipeline
// feeds each vendor's detections from one goroutine at a time. The StormGuard watches
// escalations across vendors: that many at once is an attack on us, or a bug.
package incidents

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/detectors"
)

// State is where an incident stands.
type State string

// The incident states.
const (
	// StateOpen: detections are arriving and nothing is contained yet.
	StateOpen State = "open"
	// StateContained: a revocation was verified; the exposure window is measured.
	StateContained State = "contained"
	// StateClosed: no detection for the cooldown, or a new incident superseded it on
	// the same key; a new detection opens a new incident.
	StateClosed State = "closed"
)

// ActionStatus is where one action of an incident stands.
type ActionStatus string

// The action statuses. Planned, held, skipped, applied, verified and failed are the
// statuses of the replay report; unverified means Apply succeeded but Verify could not
// prove the credential dead (escalated).
const (
	ActionPlanned    ActionStatus = "planned"
	ActionHeld       ActionStatus = "held"
	ActionSkipped    ActionStatus = "skipped"
	ActionApplied    ActionStatus = "applied"
	ActionVerified   ActionStatus = "verified"
	ActionUnverified ActionStatus = "unverified"
	ActionFailed     ActionStatus = "failed"
	ActionRejected   ActionStatus = "rejected"
	ActionExpired    ActionStatus = "expired"
	// ActionAnnounced: a decision's veto window is running; the action runs when it ends
	// (ActionRef.RunsAt) unless a human vetoes it.
	ActionAnnounced ActionStatus = "announced"
	// ActionVetoed: a human vetoed the action during its veto window; nothing ran.
	ActionVetoed ActionStatus = "vetoed"
)

// DetectionRef is what an incident keeps of each detection.
type DetectionRef struct {
	ID               string             `json:"id"`
	Detector         detectors.Kind     `json:"detector"`
	Severity         detectors.Severity `json:"severity"`
	Score            float64            `json:"score"`
	Observed         float64            `json:"observed"`
	Expected         detectors.Band     `json:"expected"`
	Unit             string             `json:"unit"`
	FirstAnomalousAt time.Time          `json:"first_anomalous_at"`
	DetectedAt       time.Time          `json:"detected_at"`
	Reason           string             `json:"reason"`
	// Sensor is the sensor of the crossing event, or the silent sensor.
	Sensor string `json:"sensor,omitempty"`
}

// DecisionRef is what an incident keeps of each playbook decision.
type DecisionRef struct {
	ID        string    `json:"id"`
	At        time.Time `json:"at"`
	Revision  string    `json:"revision"`
	Playbooks []string  `json:"playbooks"`
	Reason    string    `json:"reason"`
	Severity  string    `json:"severity"`
	Escalated bool      `json:"escalated"`
	// Trigger is the detection the decision was made for.
	Trigger string `json:"trigger"`
	// Unfinished says that carrying the decision out failed before its actions were all
	// handed over (the ledger or the control plane unavailable, say): the trigger, when
	// delivered again, carries it out again (see Incident.Unfinished).
	Unfinished bool `json:"unfinished,omitempty"`
}

// ActionRef is the latest state of one action of an incident.
type ActionRef struct {
	// ID identifies the action within the fleet: hash of incident, type and target.
	ID         string                `json:"id"`
	Type       killswitch.ActionType `json:"type"`
	Credential string                `json:"credential,omitempty"`
	Target     string                `json:"target"`
	Playbook   string                `json:"playbook,omitempty"`
	Mode       killswitch.Mode       `json:"mode,omitempty"`
	Status     ActionStatus          `json:"status"`
	At         time.Time             `json:"at"`
	Detail     string                `json:"detail,omitempty"`
	// RunsAt is when an announced action runs unless vetoed: the end of its veto window.
	RunsAt *time.Time `json:"runs_at,omitempty"`
}

// Incident groups the detections for one key (vendor, or vendor and credential) until
// it has been quiet for the cooldown, with its decisions and actions and the
// milestones of its exposure window.
type Incident struct {
	ID         string             `json:"id"`
	Vendor     string             `json:"vendor"`
	Credential string             `json:"credential"`
	State      State              `json:"state"`
	Severity   detectors.Severity `json:"severity"`
	Detectors  []detectors.Kind   `json:"detectors"`
	// Detections keeps the first MaxDetections detections; DetectionCount counts all.
	Detections     []DetectionRef `json:"detections"`
	DetectionCount int            `json:"detection_count"`
	Decisions      []DecisionRef  `json:"decisions"`
	Actions        []ActionRef    `json:"actions"`

	// FirstAnomalousAt is the earliest first-anomalous event time of its detections.
	FirstAnomalousAt time.Time `json:"first_anomalous_at"`
	// DetectedAt is when the first detection fired (event time of the crossing event).
	DetectedAt time.Time `json:"detected_at"`
	// LastDetectionAt is the detection time of the latest detection.
	LastDetectionAt time.Time `json:"last_detection_at"`
	// DecidedAt is when the first decision was recorded.
	DecidedAt *time.Time `json:"decided_at,omitempty"`
	// AnnouncedAt is when the first destructive action was announced in a veto window,
	// and VetoWindowEndsAt when that window ends: the wait is part of the exposure window.
	AnnouncedAt      *time.Time `json:"announced_at,omitempty"`
	VetoWindowEndsAt *time.Time `json:"veto_window_ends_at,omitempty"`
	// AppliedAt is when the first destructive action was applied.
	AppliedAt *time.Time `json:"applied_at,omitempty"`
	// ContainedAt is when the first revocation was verified.
	ContainedAt *time.Time `json:"contained_at,omitempty"`
	// ExposureWindowSeconds is ContainedAt − FirstAnomalousAt, once contained.
	ExposureWindowSeconds *float64 `json:"exposure_window_seconds,omitempty"`
	// ClosedAt is when the incident closed: its last detection time plus the cooldown.
	ClosedAt *time.Time `json:"closed_at,omitempty"`
	// AnomalousBytes is the largest anomalous byte count any detection reported.
	AnomalousBytes int64 `json:"anomalous_bytes"`
	// Kill is set on the incident of a whole-vendor cut-off (kill-vendor). Such an
	// incident is contained only once every destructive action of its plan is verified:
	// one exposure window for the whole vendor.
	Kill *KillNote `json:"kill,omitempty"`
	// FalsePositive marks an incident a human restored as a false positive (see Restore).
	FalsePositive bool `json:"false_positive,omitempty"`
	// Restore is set once the incident was restored after a false positive.
	Restore *RestoreNote `json:"restore,omitempty"`
}

// KillNote is what an incident keeps of the order that cut its vendor off.
type KillNote struct {
	// Order identifies the kill order.
	Order string `json:"order"`
	// RequestedBy and ApprovedBy are the users who ordered and approved it (the same
	// user when no second approver is required).
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	ApprovedBy  string    `json:"approved_by,omitempty"`
	ApprovedAt  time.Time `json:"approved_at,omitzero"`
	Reason      string    `json:"reason"`
	// Credentials counts the credentials in the plan.
	Credentials int `json:"credentials"`
}

// RestoreNote is what an incident keeps of its restore after a false positive.
type RestoreNote struct {
	By          string    `json:"by"`
	Reason      string    `json:"reason"`
	RequestedAt time.Time `json:"requested_at"`
	// RestoredAt is when the last step was verified.
	RestoredAt time.Time `json:"restored_at"`
	// TimeToRestoreSeconds is RestoredAt − ContainedAt: how long the vendor stayed cut
	// off by the false positive (0 when the incident was never contained).
	TimeToRestoreSeconds float64 `json:"time_to_restore_seconds"`
	// TookSeconds is RestoredAt − RequestedAt: the restore itself.
	TookSeconds float64 `json:"took_seconds"`
	// Steps says, per credential, what was reversed, re-issued, or stays dead.
	Steps []RestoreStep `json:"steps"`
	// Complete reports that every step that can restore something did.
	Complete bool `json:"complete"`
}

// RestoreOutcome says what restore did for one credential.
type RestoreOutcome string

// The restore outcomes.
const (
	// RestoreReversed: the cut was undone (entity re-enabled, policy restored).
	RestoreReversed RestoreOutcome = "reversed"
	// RestoreReissued: a new credential was issued and handed over response-wrapped.
	RestoreReissued RestoreOutcome = "reissued"
	// RestoreStaysDead: nothing can bring it back (revoked tokens and leases): the
	// vendor must obtain a new one the usual way.
	RestoreStaysDead RestoreOutcome = "stays_dead"
	// RestoreFailed: restoring it failed (Error says why); restore may be run again.
	RestoreFailed RestoreOutcome = "failed"
)

// RestoreStep is one credential's restore.
type RestoreStep struct {
	Credential string                `json:"credential"`
	Type       killswitch.ActionType `json:"type"`
	Outcome    RestoreOutcome        `json:"outcome"`
	Evidence   string                `json:"evidence,omitempty"`
	// WrapAccessorFP fingerprints the response-wrapping token's accessor of a re-issued
	// credential (the token itself is handed to the operator once, never stored).
	WrapAccessorFP string    `json:"wrap_accessor_fp,omitempty"`
	WrapExpiresAt  time.Time `json:"wrap_expires_at,omitzero"`
	Error          string    `json:"error,omitempty"`
	At             time.Time `json:"at"`
}

// Key returns the incident's detector key.
func (in *Incident) Key() detectors.Key {
	return detectors.Key{Vendor: in.Vendor, Credential: in.Credential}
}

// Clone returns a deep copy of in.
func (in *Incident) Clone() *Incident {
	c := *in
	c.Detectors = slices.Clone(in.Detectors)
	c.Detections = slices.Clone(in.Detections)
	c.Decisions = slices.Clone(in.Decisions)
	c.Actions = slices.Clone(in.Actions)
	for _, p := range []**time.Time{&c.DecidedAt, &c.AnnouncedAt, &c.VetoWindowEndsAt, &c.AppliedAt, &c.ContainedAt, &c.ClosedAt} {
		if *p != nil {
			t := **p
			*p = &t
		}
	}
	if c.ExposureWindowSeconds != nil {
		v := *c.ExposureWindowSeconds
		c.ExposureWindowSeconds = &v
	}
	if c.Kill != nil {
		k := *c.Kill
		c.Kill = &k
	}
	if c.Restore != nil {
		r := *c.Restore
		r.Steps = slices.Clone(r.Steps)
		c.Restore = &r
	}
	return &c
}

// Settings configures grouping and the storm guard (the `incidents:` section of the
// configuration). Zero values mean the documented default.
type Settings struct {
	// Cooldown is how long (in detection time) an incident stays open without a new
	// detection before it closes; a later detection opens a new incident. Default 30m.
	Cooldown time.Duration `yaml:"cooldown"`
	// MaxDetections bounds the detections kept per incident (all are counted). Default 64.
	MaxDetections int `yaml:"max_detections"`
	// Storm configures the storm guard.
	Storm StormSettings `yaml:"storm"`
	// PlannedContains counts a planned destructive action as containment: a tabletop
	// replay without a Vault measures what would have happened. Not configurable.
	PlannedContains bool `yaml:"-"`
}

// Validate checks the settings, each error naming its field and wrapping
// killswitch.ErrInvalid.
func (s Settings) Validate() error {
	var errs []error
	if s.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("%w: incidents.cooldown: must not be negative, got %s", killswitch.ErrInvalid, s.Cooldown))
	}
	if s.MaxDetections < 0 {
		errs = append(errs, fmt.Errorf("%w: incidents.max_detections: must not be negative, got %d", killswitch.ErrInvalid, s.MaxDetections))
	}
	if s.Storm.Window < 0 {
		errs = append(errs, fmt.Errorf("%w: incidents.storm.window: must not be negative, got %s", killswitch.ErrInvalid, s.Storm.Window))
	}
	return errors.Join(errs...)
}

func (s *Settings) defaults() {
	if s.Cooldown <= 0 {
		s.Cooldown = 30 * time.Minute
	}
	if s.MaxDetections <= 0 {
		s.MaxDetections = 64
	}
}

// Escalation says why a detection calls for a (new) playbook decision; the zero value
// means it does not: it was added to an incident already decided at this level.
type Escalation string

// The escalation reasons.
const (
	// EscalationNone: no new decision is needed.
	EscalationNone Escalation = ""
	// EscalationNew: the detection opened a new incident.
	EscalationNew Escalation = "new_incident"
	// EscalationSeverity: the detection is more severe than any before in the incident.
	EscalationSeverity Escalation = "severity_increased"
	// EscalationDetector: a detector kind not seen before in the incident fired.
	EscalationDetector Escalation = "new_detector"
	// EscalationAfterContainment: traffic was detected after the incident was contained.
	EscalationAfterContainment Escalation = "after_containment"
	// EscalationSensor: a sensor went silent that had not before in the incident. The
	// silences of every sensor that stops for all vendors share one incident (they have
	// no vendor): each sensor that goes dark is news, not a repeat.
	EscalationSensor Escalation = "new_sensor"
)

// Observation is what one detection did to the incidents.
type Observation struct {
	// Incident is the incident the detection belongs to (the Book's own copy: change
	// it only through the Book's methods).
	Incident *Incident
	// Escalation says whether (and why) a playbook decision is needed.
	Escalation Escalation
	// Closed is the incident the detection's one superseded on the same key (quiet
	// for the cooldown), now closed; nil when none. Store it: it changed.
	Closed *Incident
}

// Book holds the current (open or contained) incident of every key. It is not safe
// for concurrent use.
type Book struct {
	s    Settings
	open map[detectors.Key]*Incident
}

// NewBook returns an empty Book.
func NewBook(s Settings) *Book {
	s.defaults()
	return &Book{s: s, open: make(map[detectors.Key]*Incident)}
}

// Restore makes an incident (e.g. loaded from storage after a restart) current again
// when it is still open or contained.
func (b *Book) Restore(in *Incident) {
	if in.State == StateClosed {
		return
	}
	if cur, ok := b.open[in.Key()]; !ok || in.LastDetectionAt.After(cur.LastDetectionAt) {
		b.open[in.Key()] = in
	}
}

// Replace makes in its key's current incident, whatever the Book held for the key
// (another instance's incident won the key; see pipeline.Arbiter).
func (b *Book) Replace(in *Incident) { b.open[in.Key()] = in }

// Forget drops key's current incident from the Book (not from storage).
func (b *Book) Forget(key detectors.Key) { delete(b.open, key) }

// Observe adds d to the current incident of its key, opening a new one when there is
// none or the current one has been quiet for the cooldown (which is then closed and
// returned in Observation.Closed). A detection already in the incident (a redelivery)
// changes nothing.
func (b *Book) Observe(d detectors.Detection) Observation {
	key := d.Key
	var closed *Incident
	in, ok := b.open[key]
	if ok && d.DetectedAt.Sub(in.LastDetectionAt) > b.s.Cooldown {
		b.close(in)
		closed, ok = in, false
	}
	if !ok {
		in = &Incident{
			ID:               ID(key, d.ID),
			Vendor:           key.Vendor,
			Credential:       key.Credential,
			State:            StateOpen,
			FirstAnomalousAt: d.FirstAnomalousAt,
			DetectedAt:       d.DetectedAt,
		}
		b.open[key] = in
		b.add(in, d)
		return Observation{Incident: in, Escalation: EscalationNew, Closed: closed}
	}
	for _, r := range in.Detections {
		if r.ID == d.ID {
			return Observation{Incident: in}
		}
	}
	newKind := !slices.Contains(in.Detectors, d.Detector)
	higher := d.Severity.Rank() > in.Severity.Rank()
	newSensor := d.Detector == detectors.KindSilence && d.Sensor != "" && !slices.ContainsFunc(in.Detections,
		func(r DetectionRef) bool { return r.Detector == detectors.KindSilence && r.Sensor == d.Sensor })
	// Traffic detected after the verified revocation means it did not stop the vendor
	// (or another credential is in use); detections of traffic from before it are late news.
	contained := in.State == StateContained && in.ContainedAt != nil && d.DetectedAt.After(*in.ContainedAt)
	b.add(in, d)
	o := Observation{Incident: in}
	switch {
	case contained:
		o.Escalation = EscalationAfterContainment
	case higher:
		o.Escalation = EscalationSeverity
	case newKind:
		o.Escalation = EscalationDetector
	case newSensor:
		o.Escalation = EscalationSensor
	}
	return o
}

func (b *Book) add(in *Incident, d detectors.Detection) {
	in.DetectionCount++
	if len(in.Detections) < b.s.MaxDetections {
		in.Detections = append(in.Detections, DetectionRef{
			ID: d.ID, Detector: d.Detector, Severity: d.Severity, Score: d.Score,
			Observed: d.Observed, Expected: d.Expected, Unit: d.Unit,
			FirstAnomalousAt: d.FirstAnomalousAt, DetectedAt: d.DetectedAt, Reason: d.Reason, Sensor: d.Sensor,
		})
	}
	if !slices.Contains(in.Detectors, d.Detector) {
		in.Detectors = append(in.Detectors, d.Detector)
	}
	if d.Severity.Rank() > in.Severity.Rank() {
		in.Severity = d.Severity
	}
	if !d.FirstAnomalousAt.IsZero() && (in.FirstAnomalousAt.IsZero() || d.FirstAnomalousAt.Before(in.FirstAnomalousAt)) {
		in.FirstAnomalousAt = d.FirstAnomalousAt
	}
	// Use after revocation follows the incident's own revocation: it never keeps the
	// incident from closing (a later detection of any kind then opens a new incident,
	// decided afresh), however long the revoked credential keeps moving data.
	if d.DetectedAt.After(in.LastDetectionAt) && d.Detector != detectors.KindUseAfterRevocation {
		in.LastDetectionAt = d.DetectedAt
	}
	if d.AnomalousBytes > in.AnomalousBytes {
		in.AnomalousBytes = d.AnomalousBytes
	}
}

// Unfinished returns the decision made for detection trigger whose carrying out
// failed, if any.
func (in *Incident) Unfinished(trigger string) (DecisionRef, bool) {
	for _, d := range in.Decisions {
		if d.Trigger == trigger && d.Unfinished {
			return d, true
		}
	}
	return DecisionRef{}, false
}

// Finished records whether carrying out the latest decision made for detection
// trigger succeeded (see DecisionRef.Unfinished); earlier ones for it are settled with
// it (a playbook reload between two deliveries makes another decision).
func (in *Incident) Finished(trigger string, ok bool) {
	last := -1
	for i := range in.Decisions {
		if in.Decisions[i].Trigger == trigger {
			in.Decisions[i].Unfinished = false
			last = i
		}
	}
	if last >= 0 {
		in.Decisions[last].Unfinished = !ok
	}
}

// Decided records a decision for the incident.
func (b *Book) Decided(in *Incident, d DecisionRef) {
	if slices.ContainsFunc(in.Decisions, func(x DecisionRef) bool { return x.ID == d.ID }) {
		return
	}
	in.Decisions = append(in.Decisions, d)
	if in.DecidedAt == nil {
		t := d.At
		in.DecidedAt = &t
	}
}

// ActionUpdate records the latest state of one of the incident's actions and reports
// whether it contained the incident just now. The first destructive action announced in
// a veto window sets AnnouncedAt and VetoWindowEndsAt. The first applied destructive action sets
// AppliedAt; the first verified one (or planned, with PlannedContains) sets ContainedAt,
// the exposure window, and moves the incident to contained.
func (b *Book) ActionUpdate(in *Incident, a ActionRef) (contained bool) {
	i := slices.IndexFunc(in.Actions, func(x ActionRef) bool { return x.ID == a.ID })
	if i < 0 {
		in.Actions = append(in.Actions, a)
	} else {
		in.Actions[i] = a
	}
	if !a.Type.Destructive() {
		return false
	}
	if a.Status == ActionAnnounced && a.RunsAt != nil && in.AnnouncedAt == nil {
		at, ends := a.At, *a.RunsAt
		in.AnnouncedAt, in.VetoWindowEndsAt = &at, &ends
	}
	if (a.Status == ActionApplied || a.Status == ActionVerified) && in.AppliedAt == nil {
		t := a.At
		in.AppliedAt = &t
	}
	contains := func(a ActionRef) bool {
		return a.Status == ActionVerified || (b.s.PlannedContains && a.Status == ActionPlanned)
	}
	if !contains(a) || in.ContainedAt != nil {
		return false
	}
	t := a.At
	if in.Kill != nil {
		// A whole-vendor cut-off contains once all of it is verified.
		for _, x := range in.Actions {
			if x.Type.Destructive() && x.Status != ActionSkipped {
				if !contains(x) {
					return false
				}
				if x.At.After(t) {
					t = x.At
				}
			}
		}
	}
	in.ContainedAt = &t
	w := t.Sub(in.FirstAnomalousAt).Seconds()
	in.ExposureWindowSeconds = &w
	if in.State == StateOpen {
		in.State = StateContained
	}
	return true
}

// Current returns the open or contained incident for key, if any.
func (b *Book) Current(key detectors.Key) (*Incident, bool) {
	in, ok := b.open[key]
	return in, ok
}

// Len returns the number of current incidents.
func (b *Book) Len() int { return len(b.open) }

// Expire closes every incident quiet for longer than the cooldown as of now (detection
// time) and returns them, oldest first. Store them: they changed.
func (b *Book) Expire(now time.Time) []*Incident {
	var closed []*Incident
	for _, in := range b.open {
		if now.Sub(in.LastDetectionAt) > b.s.Cooldown {
			b.close(in)
			closed = append(closed, in)
		}
	}
	slices.SortFunc(closed, func(a, b *Incident) int {
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return closed
}

// close closes in: it closed when its cooldown ran out, whoever noticed it.
func (b *Book) close(in *Incident) {
	in.State = StateClosed
	t := in.LastDetectionAt.Add(b.s.Cooldown)
	in.ClosedAt = &t
	delete(b.open, in.Key())
}

// ID is the deterministic ID of the incident opened by detection detID for key.
func ID(key detectors.Key, detID string) string {
	h := sha256.Sum256([]byte(key.Vendor + "\x00" + key.Credential + "\x00" + detID))
	return "inc-" + hex.EncodeToString(h[:10])
}
