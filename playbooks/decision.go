package playbooks

// ActionType names an action a playbook may ask for. The set is closed: a decision
// naming any other type is rejected and escalated.
type ActionType string

// The known action types.
const (
	// ActionRevokeTokenAccessor revokes a Vault token by accessor.
	ActionRevokeTokenAccessor ActionType = "vault.revoke_token_accessor"
	// ActionDestroySecretID destroys an AppRole secret-id by accessor.
	ActionDestroySecretID ActionType = "vault.destroy_secret_id"
	// ActionRevokeLease revokes one exact Vault lease.
	ActionRevokeLease ActionType = "vault.revoke_lease"
	// ActionRevokeLeasePrefix revokes every lease under the credential's prefix (sync).
	ActionRevokeLeasePrefix ActionType = "vault.revoke_lease_prefix"
	// ActionRotateKV writes a new random version of a KV v2 secret and destroys the old ones.
	ActionRotateKV ActionType = "vault.rotate_kv"
	// ActionQuarantinePolicy replaces an ACL policy by deny-all, keeping the original.
	ActionQuarantinePolicy ActionType = "vault.quarantine_policy"
	// ActionNATSPublish publishes the incident on a NATS subject for other automation.
	ActionNATSPublish ActionType = "nats.publish"
	// ActionWebhook posts the incident to a configured webhook.
	ActionWebhook ActionType = "webhook"
	// ActionNotify tells humans (the notification subject and configured channels);
	// it never changes anything.
	ActionNotify ActionType = "notify"
)

// ActionTypes lists every known action type.
var ActionTypes = [...]ActionType{
	ActionRevokeTokenAccessor, ActionDestroySecretID, ActionRevokeLease, ActionRevokeLeasePrefix,
	ActionRotateKV, ActionQuarantinePolicy, ActionNATSPublish, ActionWebhook, ActionNotify,
}

// Destructive reports whether the action type takes something away from a vendor
// (and so is subject to budgets, cooldowns and approvals).
func (t ActionType) Destructive() bool {
	switch t {
	case ActionRevokeTokenAccessor, ActionDestroySecretID, ActionRevokeLease,
		ActionRevokeLeasePrefix, ActionRotateKV, ActionQuarantinePolicy:
		return true
	}
	return false
}

// Known reports whether t is one of the known action types.
func (t ActionType) Known() bool {
	for _, k := range ActionTypes {
		if t == k {
			return true
		}
	}
	return false
}

// Mode says whether actions run for real.
type Mode string

// The modes.
const (
	// ModeEnforce applies actions.
	ModeEnforce Mode = "enforce"
	// ModeShadow plans actions and records what would have happened, applying nothing.
	ModeShadow Mode = "shadow"
	// ModeDryRun plans actions without even taking idempotency claims.
	ModeDryRun Mode = "dry-run"
)

// Action is one step of a decision.
type Action struct {
	// Type is the action type.
	Type ActionType `json:"type"`
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
	Mode Mode `json:"mode,omitempty"`
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
