package playbooks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/killswitch-dev/killswitch"
)

// Action is one step of a decision.
type Action struct {
	// Type is the action type.
	Type killswitch.ActionType `json:"type"`
	// Credential names a credential of the detection's vendor, as in the vendor
	// inventory. Required for vault.* actions; never a wildcard.
	Credential string `json:"credential,omitempty"`
	// Subject is the NATS subject for nats.publish.
	Subject string `json:"subject,omitempty"`
	// Webhook names a configured webhook for the webhook action.
	Webhook string `json:"webhook,omitempty"`
	// Message is free text for notify.
	Message string `json:"message,omitempty"`
	// Mode is set by the engine, never by a playbook: the mode of the playbooks that asked
	// for the action (enforce when any of them enforces, else shadow, else dry-run). The
	// guard rails honour it.
	Mode killswitch.Mode `json:"mode,omitempty"`
	// Playbooks is set by the engine, never by a playbook: the playbooks (package paths)
	// that asked for the action, sorted.
	Playbooks []string `json:"playbooks,omitempty"`
}

// Decision is what the playbooks decide for one detection: a closed schema.
type Decision struct {
	// Actions to take, merged over every matching playbook, deterministic order, no duplicates.
	Actions []Action `json:"actions"`
	// RequiresApproval holds every destructive action until a human approves it.
	RequiresApproval bool `json:"requires_approval"`
	// VetoWindow, when set, announces every destructive action that the guard rails let
	// through and runs it when the window ends, unless a human vetoes it meanwhile (a
	// playbook writes it as a duration string, "90s", between MinVetoWindow and
	// MaxVetoWindow). RequiresApproval wins over it: a held action waits for an approval.
	VetoWindow Duration `json:"veto_window,omitzero"`
	// Reason explains the decision for humans.
	Reason string `json:"reason"`
	// Severity grades the decision: info, low, medium, high or critical.
	Severity string `json:"severity"`
}

// Bounds of a decision's veto window.
const (
	// MinVetoWindow is the shortest veto window a decision may ask for.
	MinVetoWindow = time.Second
	// MaxVetoWindow is the longest: a longer wait is an approval, not a veto window.
	MaxVetoWindow = time.Hour
)

// Duration is a time.Duration written in JSON as a Go duration string ("1m30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns the duration as Go writes it ("1m30s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler: a duration string ("90s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration must be a string such as \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
