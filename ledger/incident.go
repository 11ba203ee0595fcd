package ledger

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
)

// IncidentState is where an incident stands.
type IncidentState string

// The incident states.
const (
	// StateOpen: detections are arriving and nothing is contained yet.
	StateOpen IncidentState = "open"
	// StateContained: a revocation was verified; the exposure window is measured.
	StateContained IncidentState = "contained"
	// StateClosed: no detection for the cooldown; a new detection opens a new incident.
	StateClosed IncidentState = "closed"
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
}

// ActionRef is the latest state of one action of an incident.
type ActionRef struct {
	// ID identifies the action within the fleet: hash of incident, type and target.
	ID         string       `json:"id"`
	Type       string       `json:"type"`
	Credential string       `json:"credential,omitempty"`
	Target     string       `json:"target"`
	Playbook   string       `json:"playbook,omitempty"`
	Mode       string       `json:"mode,omitempty"`
	Status     ActionStatus `json:"status"`
	At         time.Time    `json:"at"`
	Detail     string       `json:"detail,omitempty"`
}

// Incident groups the detections for one key (vendor, or vendor and credential) until
// it has been quiet for the cooldown, with its decisions and actions and the
// milestones of its exposure window.
type Incident struct {
	ID         string             `json:"id"`
	Vendor     string             `json:"vendor"`
	Credential string             `json:"credential"`
	State      IncidentState      `json:"state"`
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
	// AppliedAt is when the first destructive action was applied.
	AppliedAt *time.Time `json:"applied_at,omitempty"`
	// ContainedAt is when the first revocation was verified.
	ContainedAt *time.Time `json:"contained_at,omitempty"`
	// ExposureWindowSeconds is ContainedAt − FirstAnomalousAt, once contained.
	ExposureWindowSeconds *float64 `json:"exposure_window_seconds,omitempty"`
	// AnomalousBytes is the largest anomalous byte count any detection reported.
	AnomalousBytes int64 `json:"anomalous_bytes"`
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
	for _, p := range []**time.Time{&c.DecidedAt, &c.AppliedAt, &c.ContainedAt} {
		if *p != nil {
			t := **p
			*p = &t
		}
	}
	if c.ExposureWindowSeconds != nil {
		v := *c.ExposureWindowSeconds
		c.ExposureWindowSeconds = &v
	}
	return &c
}

// severityRank orders severities; unknown ones rank lowest.
func severityRank(s detectors.Severity) int {
	switch s {
	case detectors.SeverityCritical:
		return 5
	case detectors.SeverityHigh:
		return 4
	case detectors.SeverityMedium:
		return 3
	case detectors.SeverityLow:
		return 2
	case detectors.SeverityInfo:
		return 1
	}
	return 0
}

// IncidentConfig configures grouping.
type IncidentConfig struct {
	// Cooldown is how long (in detection time) an incident stays open without a new
	// detection before it closes; a later detection opens a new incident. Default 30m.
	Cooldown time.Duration
	// MaxDetections bounds the detections kept per incident (all are counted). Default 64.
	MaxDetections int
	// PlannedContains counts a planned destructive action as containment: a tabletop
	// replay without a Vault measures what would have happened.
	PlannedContains bool
}

func (c *IncidentConfig) defaults() {
	if c.Cooldown <= 0 {
		c.Cooldown = 30 * time.Minute
	}
	if c.MaxDetections <= 0 {
		c.MaxDetections = 64
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
)

// Incidents groups detections into incidents. It is not safe for concurrent use: the
// pipeline feeds it from one goroutine.
type Incidents struct {
	cfg  IncidentConfig
	open map[detectors.Key]*Incident
}

// NewIncidents returns an empty grouping.
func NewIncidents(cfg IncidentConfig) *Incidents {
	cfg.defaults()
	return &Incidents{cfg: cfg, open: make(map[detectors.Key]*Incident)}
}

// Restore makes an incident (e.g. loaded from storage after a restart) current again
// when it is still open or contained.
func (s *Incidents) Restore(in *Incident) {
	if in.State == StateClosed {
		return
	}
	if cur, ok := s.open[in.Key()]; !ok || in.LastDetectionAt.After(cur.LastDetectionAt) {
		s.open[in.Key()] = in
	}
}

// Observe adds d to the current incident of its key, opening a new one when there is
// none or the current one has been quiet for the cooldown. It returns the incident (the
// Incidents' own copy: mutate it only through Incidents' methods) and whether a playbook
// decision is needed. A detection already in the incident (a redelivery) changes nothing.
func (s *Incidents) Observe(d detectors.Detection) (*Incident, Escalation) {
	key := d.Key
	in, ok := s.open[key]
	if ok && d.DetectedAt.Sub(in.LastDetectionAt) > s.cfg.Cooldown {
		in.State = StateClosed
		delete(s.open, key)
		ok = false
	}
	if !ok {
		in = &Incident{
			ID:               IncidentID(key, d.ID),
			Vendor:           key.Vendor,
			Credential:       key.Credential,
			State:            StateOpen,
			FirstAnomalousAt: d.FirstAnomalousAt,
			DetectedAt:       d.DetectedAt,
		}
		s.open[key] = in
		s.add(in, d)
		return in, EscalationNew
	}
	for _, r := range in.Detections {
		if r.ID == d.ID {
			return in, EscalationNone
		}
	}
	newKind := !slices.Contains(in.Detectors, d.Detector)
	higher := severityRank(d.Severity) > severityRank(in.Severity)
	// Traffic detected after the verified revocation means it did not stop the vendor
	// (or another credential is in use); detections of traffic from before it are late news.
	contained := in.State == StateContained && in.ContainedAt != nil && d.DetectedAt.After(*in.ContainedAt)
	s.add(in, d)
	switch {
	case contained:
		return in, EscalationAfterContainment
	case higher:
		return in, EscalationSeverity
	case newKind:
		return in, EscalationDetector
	}
	return in, EscalationNone
}

func (s *Incidents) add(in *Incident, d detectors.Detection) {
	in.DetectionCount++
	if len(in.Detections) < s.cfg.MaxDetections {
		in.Detections = append(in.Detections, DetectionRef{
			ID: d.ID, Detector: d.Detector, Severity: d.Severity, Score: d.Score,
			Observed: d.Observed, Expected: d.Expected, Unit: d.Unit,
			FirstAnomalousAt: d.FirstAnomalousAt, DetectedAt: d.DetectedAt, Reason: d.Reason,
		})
	}
	if !slices.Contains(in.Detectors, d.Detector) {
		in.Detectors = append(in.Detectors, d.Detector)
	}
	if severityRank(d.Severity) > severityRank(in.Severity) {
		in.Severity = d.Severity
	}
	if !d.FirstAnomalousAt.IsZero() && (in.FirstAnomalousAt.IsZero() || d.FirstAnomalousAt.Before(in.FirstAnomalousAt)) {
		in.FirstAnomalousAt = d.FirstAnomalousAt
	}
	if d.DetectedAt.After(in.LastDetectionAt) {
		in.LastDetectionAt = d.DetectedAt
	}
	if d.AnomalousBytes > in.AnomalousBytes {
		in.AnomalousBytes = d.AnomalousBytes
	}
}

// Decided records a decision for the incident.
func (s *Incidents) Decided(in *Incident, d DecisionRef) {
	if slices.ContainsFunc(in.Decisions, func(x DecisionRef) bool { return x.ID == d.ID }) {
		return
	}
	in.Decisions = append(in.Decisions, d)
	if in.DecidedAt == nil {
		t := d.At
		in.DecidedAt = &t
	}
}

// ActionUpdate records the latest state of one of the incident's actions. The first
// applied destructive action sets AppliedAt; the first verified one sets ContainedAt,
// the exposure window, and moves the incident to contained.
func (s *Incidents) ActionUpdate(in *Incident, a ActionRef, destructive bool) {
	i := slices.IndexFunc(in.Actions, func(x ActionRef) bool { return x.ID == a.ID })
	if i < 0 {
		in.Actions = append(in.Actions, a)
	} else {
		in.Actions[i] = a
	}
	if !destructive {
		return
	}
	if (a.Status == ActionApplied || a.Status == ActionVerified) && in.AppliedAt == nil {
		t := a.At
		in.AppliedAt = &t
	}
	contains := a.Status == ActionVerified || (s.cfg.PlannedContains && a.Status == ActionPlanned)
	if contains && in.ContainedAt == nil {
		t := a.At
		in.ContainedAt = &t
		w := t.Sub(in.FirstAnomalousAt).Seconds()
		in.ExposureWindowSeconds = &w
		in.State = StateContained
	}
}

// Current returns the open or contained incident for key, if any.
func (s *Incidents) Current(key detectors.Key) (*Incident, bool) {
	in, ok := s.open[key]
	return in, ok
}

// Expire closes every incident quiet for longer than the cooldown as of now (detection
// time) and returns them.
func (s *Incidents) Expire(now time.Time) []*Incident {
	var closed []*Incident
	for k, in := range s.open {
		if now.Sub(in.LastDetectionAt) > s.cfg.Cooldown {
			in.State = StateClosed
			delete(s.open, k)
			closed = append(closed, in)
		}
	}
	slices.SortFunc(closed, func(a, b *Incident) int { return a.DetectedAt.Compare(b.DetectedAt) })
	return closed
}

// IncidentID is the deterministic ID of the incident opened by detection detID for key.
func IncidentID(key detectors.Key, detID string) string {
	h := sha256.Sum256([]byte(key.Vendor + "\x00" + key.Credential + "\x00" + detID))
	return "inc-" + hex.EncodeToString(h[:10])
}
