package killswitch

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
	// ActionDisableEntity disables a Vault identity entity: every token of the entity
	// stops working at once, without being revoked (reversible: restore re-enables it).
	ActionDisableEntity ActionType = "vault.disable_entity"
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
	ActionRotateKV, ActionQuarantinePolicy, ActionDisableEntity, ActionNATSPublish, ActionWebhook, ActionNotify,
}

// Destructive reports whether the action type takes something away from a vendor
// (and so is subject to budgets, cooldowns and approvals).
func (t ActionType) Destructive() bool {
	switch t {
	case ActionRevokeTokenAccessor, ActionDestroySecretID, ActionRevokeLease,
		ActionRevokeLeasePrefix, ActionRotateKV, ActionQuarantinePolicy, ActionDisableEntity:
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

// Mode says whether actions run for real. The zero Mode means "not set": it imposes
// nothing when modes are combined.
type Mode string

// The modes, from the most to the least permissive.
const (
	// ModeEnforce applies actions.
	ModeEnforce Mode = "enforce"
	// ModeShadow plans actions and records what would have happened, applying nothing.
	ModeShadow Mode = "shadow"
	// ModeDryRun records the decision only: no plan lookups, no idempotency claims.
	ModeDryRun Mode = "dry-run"
)

// Valid reports whether m is one of the modes or unset.
func (m Mode) Valid() bool { return m == "" || m.rank() > 0 }

// rank orders the modes by restriction: enforce 1, shadow 2, dry-run 3; 0 for unset or
// unknown.
func (m Mode) rank() int {
	switch m {
	case ModeEnforce:
		return 1
	case ModeShadow:
		return 2
	case ModeDryRun:
		return 3
	}
	return 0
}

// Strictest returns the most restrictive of the modes (dry-run, then shadow, then
// enforce); unset modes impose nothing, and none set at all is enforce. The guard rails
// combine the global, vendor and playbook modes with it.
func Strictest(modes ...Mode) Mode {
	out := ModeEnforce
	for _, m := range modes {
		if m.rank() > out.rank() {
			out = m
		}
	}
	return out
}

// Loosest returns the least restrictive of the set modes (enforce, then shadow, then
// dry-run), and "" when none is set. Actions asked for by several playbooks run in the
// loosest of their modes: one enforcing playbook is enough.
func Loosest(modes ...Mode) Mode {
	var out Mode
	for _, m := range modes {
		if r := m.rank(); r > 0 && (out == "" || r < out.rank()) {
			out = m
		}
	}
	return out
}
