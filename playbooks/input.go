package playbooks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
)

// ErrInvalidInput is wrapped by every error about an input document.
var ErrInvalidInput = errors.New("invalid playbook input")

// MaxInputBytes bounds the size of an input document read by DecodeInput.
const MaxInputBytes = 1 << 20

// Input is the document a playbook sees as `input`. It never contains secrets: credentials
// are named by their inventory name, and accessors, lease ids and paths stay out.
type Input struct {
	// Detection is the detection being decided on, with its evidence.
	Detection detectors.Detection `json:"detection"`
	// Incident summarises the incident the detection belongs to, so far, including this
	// detection.
	Incident IncidentSummary `json:"incident"`
	// Vendor is the inventory entry of the detection's vendor.
	Vendor VendorView `json:"vendor"`
	// TelemetryHealth says how well telemetry is flowing.
	TelemetryHealth Health `json:"telemetry_health"`
	// Budget is the state of the fleet-wide revocation budget.
	Budget Budget `json:"budget"`
	// Now is the time of the decision (event time in replay). When zero, the engine's
	// clock fills it in.
	Now time.Time `json:"now"`
}

// IncidentSummary is what is known of the incident when the detection is decided on.
type IncidentSummary struct {
	// ID identifies the incident.
	ID string `json:"id"`
	// Detections counts the incident's detections so far, including this one.
	Detections DetectionCounts `json:"detections"`
	// FirstAnomalousAt is the event time of the incident's first anomalous event.
	FirstAnomalousAt time.Time `json:"first_anomalous_at"`
	// Actions are the actions already taken or held for the incident.
	Actions []ActionRecord `json:"actions"`
}

// DetectionCounts counts detections, in total and per detector kind.
type DetectionCounts struct {
	// Count is the number of detections.
	Count int `json:"count"`
	// Kinds counts detections per detector kind.
	Kinds map[detectors.Kind]int `json:"kinds"`
}

// ActionStatus is where an action of an incident stands.
type ActionStatus string

// The action statuses (the same words as the replay report).
const (
	// StatusPlanned means the action was planned but not applied (shadow or dry-run).
	StatusPlanned ActionStatus = "planned"
	// StatusHeld means the action waits for an approval or was held by a guard rail.
	StatusHeld ActionStatus = "held"
	// StatusApplied means the action was applied but not yet verified.
	StatusApplied ActionStatus = "applied"
	// StatusVerified means the action was applied and verified.
	StatusVerified ActionStatus = "verified"
	// StatusFailed means the action failed.
	StatusFailed ActionStatus = "failed"
)

// ActionRecord is one action of an incident.
type ActionRecord struct {
	// Type is the action type.
	Type killswitch.ActionType `json:"type"`
	// Credential is the targeted credential, if any.
	Credential string `json:"credential,omitempty"`
	// Status says where the action stands.
	Status ActionStatus `json:"status"`
	// At is when the action reached its status.
	At time.Time `json:"at"`
}

// VendorView is the part of a vendor's inventory entry a playbook may see.
type VendorView struct {
	// Name is the vendor's name as in telemetry.
	Name string `json:"name"`
	// Known reports whether the vendor is in the inventory (false: seen only in telemetry).
	Known bool `json:"known"`
	// Owner is the team that owns the relationship.
	Owner string `json:"owner,omitempty"`
	// Mode is the vendor's action mode override (enforce, shadow, dry-run), if any.
	Mode killswitch.Mode `json:"mode,omitempty"`
	// Credentials are the vendor's credentials keyed by inventory name.
	Credentials map[string]CredentialView `json:"credentials"`
}

// CredentialView describes one credential without its identity in Vault.
type CredentialView struct {
	// Kind says how the credential is revoked.
	Kind killswitch.CredentialKind `json:"kind"`
	// Action is the action type that takes this credential away (for a policy: quarantine).
	Action killswitch.ActionType `json:"action"`
	// Protected credentials are never targets.
	Protected bool `json:"protected"`
	// ExpectedIdle marks a credential that is normally idle.
	ExpectedIdle bool `json:"expected_idle"`
}

// Health describes how telemetry is flowing.
type Health struct {
	// SensorsReporting counts sensors that reported recently.
	SensorsReporting int `json:"sensors_reporting"`
	// SensorsExpected counts sensors known to the service.
	SensorsExpected int `json:"sensors_expected"`
	// SilentSensors names the sensors that stopped reporting.
	SilentSensors []string `json:"silent_sensors,omitempty"`
	// DeadLetterRate is the fraction of telemetry messages dead-lettered recently, in [0,1].
	DeadLetterRate float64 `json:"dead_letter_rate"`
	// LagSeconds is how far the event-time watermark trails the clock.
	LagSeconds float64 `json:"lag_seconds"`
}

// Budget is the state of the fleet-wide revocation budget.
type Budget struct {
	// Remaining is how many destructive actions may still run in the window.
	Remaining int `json:"remaining"`
	// Limit is the budget per window.
	Limit int `json:"limit"`
	// Window is the budget window as a Go duration string, e.g. "1h0m0s".
	Window string `json:"window"`
	// BreakerOpen reports that the circuit breaker is open: approval-only mode.
	BreakerOpen bool `json:"breaker_open"`
}

// SummaryOf is the playbooks' view of an incident.
func SummaryOf(inc *incidents.Incident) IncidentSummary {
	s := IncidentSummary{
		ID:               inc.ID,
		Detections:       DetectionCounts{Count: inc.DetectionCount, Kinds: map[detectors.Kind]int{}},
		FirstAnomalousAt: inc.FirstAnomalousAt,
		Actions:          []ActionRecord{},
	}
	for _, d := range inc.Detections {
		s.Detections.Kinds[d.Detector]++
	}
	for _, a := range inc.Actions {
		s.Actions = append(s.Actions, ActionRecord{Type: a.Type, Credential: a.Credential, Status: statusOf(a.Status), At: a.At})
	}
	return s
}

// statusOf maps an incident's action status onto the five the playbooks know.
func statusOf(s incidents.ActionStatus) ActionStatus {
	switch s {
	case incidents.ActionPlanned, incidents.ActionSkipped:
		return StatusPlanned
	case incidents.ActionHeld:
		return StatusHeld
	case incidents.ActionApplied, incidents.ActionUnverified:
		return StatusApplied
	case incidents.ActionVerified:
		return StatusVerified
	}
	return StatusFailed
}

// NewVendorView builds the playbook view of a vendor. v is the inventory entry, or nil for
// a vendor seen only in telemetry. No secret or Vault identity is copied.
func NewVendorView(name string, v *killswitch.Vendor) VendorView {
	view := VendorView{Name: name, Credentials: map[string]CredentialView{}}
	if v == nil {
		return view
	}
	view.Known = true
	view.Owner = v.Owner
	view.Mode = v.Mode
	for cn, c := range v.Credentials {
		view.Credentials[cn] = CredentialView{
			Kind: c.Kind, Action: c.Kind.Action(), Protected: c.Protected, ExpectedIdle: c.ExpectedIdle,
		}
	}
	return view
}

// DecodeInput reads one input document strictly: unknown fields, trailing data and
// documents over MaxInputBytes are errors, and the result must pass Validate.
func DecodeInput(r io.Reader) (Input, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxInputBytes+1))
	if err != nil {
		return Input{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	if len(b) > MaxInputBytes {
		return Input{}, fmt.Errorf("%w: larger than %d bytes", ErrInvalidInput, MaxInputBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var in Input
	if err := dec.Decode(&in); err != nil {
		return Input{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Input{}, fmt.Errorf("%w: trailing data after the document", ErrInvalidInput)
	}
	if err := in.Validate(); err != nil {
		return Input{}, err
	}
	return in, nil
}

// knownKind reports whether k is one of the detector kinds.
func knownKind(k detectors.Kind) bool {
	for _, x := range detectors.Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// Validate checks that the input is consistent: a vendor (only a sensor's silence has
// none), a known detector kind and severity, a vendor view for the detection's vendor,
// and credential views whose action matches their kind.
func (in *Input) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, args...)...))
	}
	d := in.Detection
	if d.Vendor == "" && (d.Detector != detectors.KindSilence || d.Sensor == "") {
		bad("detection.vendor is empty (only a sensor's silence has no vendor)")
	}
	if !knownKind(d.Detector) {
		bad("detection.detector: unknown kind %q", d.Detector)
	}
	if d.Severity.Rank() < 0 {
		bad("detection.severity: unknown severity %q", d.Severity)
	}
	if in.Vendor.Name != d.Vendor {
		bad("vendor.name %q is not the detection's vendor %q", in.Vendor.Name, d.Vendor)
	}
	names := slices.Sorted(maps.Keys(in.Vendor.Credentials))
	for _, n := range names {
		c := in.Vendor.Credentials[n]
		if err := checkName(n); err != nil {
			bad("vendor.credentials: %v", err)
		}
		if want := c.Kind.Action(); want == "" || c.Action != want {
			bad("vendor.credentials.%s: kind %q needs action %q, got %q", n, c.Kind, want, c.Action)
		}
	}
	for k := range in.Incident.Detections.Kinds {
		if !knownKind(k) {
			bad("incident.detections.kinds: unknown kind %q", k)
		}
	}
	for i, a := range in.Incident.Actions {
		if !a.Type.Known() {
			bad("incident.actions[%d].type: unknown action type %q", i, a.Type)
		}
		switch a.Status {
		case StatusPlanned, StatusHeld, StatusApplied, StatusVerified, StatusFailed:
		default:
			bad("incident.actions[%d].status: unknown status %q", i, a.Status)
		}
	}
	return errors.Join(errs...)
}

// canonical returns a copy with times in UTC and nil collections made empty, so that the
// same input always encodes to the same bytes and playbooks never see null for a list.
func (in Input) canonical() Input {
	c := in
	utc := func(t *time.Time) { *t = t.UTC() }
	utc(&c.Now)
	utc(&c.Detection.Window.Start)
	utc(&c.Detection.Window.End)
	utc(&c.Detection.FirstAnomalousAt)
	utc(&c.Detection.DetectedAt)
	utc(&c.Incident.FirstAnomalousAt)
	if c.Incident.Detections.Kinds == nil {
		c.Incident.Detections.Kinds = map[detectors.Kind]int{}
	}
	c.Incident.Actions = append([]ActionRecord{}, in.Incident.Actions...)
	for i := range c.Incident.Actions {
		utc(&c.Incident.Actions[i].At)
	}
	if c.Vendor.Credentials == nil {
		c.Vendor.Credentials = map[string]CredentialView{}
	}
	return c
}

// encode returns the canonical JSON encoding of the input and its SHA-256 (hex).
func (in Input) encode() ([]byte, string, error) {
	b, err := json.Marshal(in.canonical())
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:]), nil
}

// Hash returns the SHA-256 (hex) of the canonical JSON encoding of the input: the input
// hash recorded with every decision.
func (in Input) Hash() (string, error) {
	_, h, err := in.encode()
	return h, err
}

// NewInput builds the input for a detection decided on its own: an incident holding just
// this detection, the vendor view v, the budget b, healthy telemetry unknown (zero), and
// now set to the detection time. `killswitch playbook eval` uses it for a bare detection.
func NewInput(d detectors.Detection, v VendorView, b Budget) Input {
	return Input{
		Detection: d,
		Incident: IncidentSummary{
			ID:               "incident-of-" + d.ID,
			Detections:       DetectionCounts{Count: 1, Kinds: map[detectors.Kind]int{d.Detector: 1}},
			FirstAnomalousAt: d.FirstAnomalousAt,
			Actions:          []ActionRecord{},
		},
		Vendor: v,
		Budget: b,
		Now:    d.DetectedAt,
	}
}
