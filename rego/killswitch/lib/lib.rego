# METADATA
# title: Killswitch playbook helpers
# description: >-
#   Helpers the shipped playbooks share: which credentials of the detection's vendor may be
#   targeted and how to build actions. This package has no entrypoint, so the engine never
#   evaluates it on its own. Import it with `import data.killswitch.lib`.
package killswitch.lib

# Action types that take something away from a vendor. They are subject to the protected
# flag, budgets and approvals.
destructive_types := {
	"vault.revoke_token_accessor",
	"vault.destroy_secret_id",
	"vault.revoke_lease",
	"vault.revoke_lease_prefix",
	"vault.rotate_kv",
	"vault.quarantine_policy",
}

# Credentials of the vendor that may be revoked: known to the inventory, not protected, and
# revoked (not quarantined) by their action.
revocable contains name if {
	some name, cred in input.vendor.credentials
	not cred.protected
	cred.action != "vault.quarantine_policy"
}

# Policies of the vendor that may be quarantined (a reversible deny-all).
quarantinable contains name if {
	some name, cred in input.vendor.credentials
	not cred.protected
	cred.action == "vault.quarantine_policy"
}

# The detection's credential, "" when the detection is about the vendor as a whole (the
# field is then absent from the input).
credential := object.get(input.detection, "credential", "")

# The credentials a revocation for this detection targets: the detection's credential when
# the detection names one, every revocable credential of the vendor when it is about the
# vendor as a whole. Protected and unknown credentials are never targets.
targets contains credential if credential in revocable

targets contains name if {
	credential == ""
	some name in revocable
}

# revoke(name) is the action that revokes credential name, whatever its kind.
revoke(name) := {"type": input.vendor.credentials[name].action, "credential": name}

# quarantine(name) is the action that quarantines policy name.
quarantine(name) := {"type": "vault.quarantine_policy", "credential": name}

# notify(message) tells humans; it never changes anything.
notify(message) := {"type": "notify", "message": message}

# revocations is the list of actions revoking every target, in name order (a set is
# iterated in sorted order).
revocations := [{"type": input.vendor.credentials[name].action, "credential": name} | some name in targets]

# The detection's subject for messages: vendor/credential, the vendor alone, or the
# sensor of a detection about a sensor (a sensor silent for every vendor has no vendor).
subject := sprintf("%s/%s", [input.detection.vendor, credential]) if credential != ""

subject := input.detection.vendor if {
	credential == ""
	input.detection.vendor != ""
}

subject := sprintf("sensor %s", [input.detection.sensor]) if input.detection.vendor == ""

# Kinds of detection that are evidence of data leaving (as opposed to silence or a new
# destination on its own).
volume_kinds := {"cap", "spike", "sustained", "dormant_credential"}

# Detector kinds seen so far in this incident (including this detection).
incident_kinds := {kind | some kind, n in input.incident.detections.kinds; n > 0}

# sort_set returns the elements of a set as a sorted array.
sort_set(s) := sort([x | some x in s])
