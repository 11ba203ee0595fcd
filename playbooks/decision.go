package playbooks

import "github.com/killswitch-dev/killswitch"

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
	// Reason explains the decision for humans.
	Reason string `json:"reason"`
	// Severity grades the decision: info, low, medium, high or critical.
	Severity string `json:"severity"`
}
