# METADATA
# title: Use after revocation goes to a human
# description: >-
#   A credential whose revocation was verified (or any credential of a vendor cut off as a
#   whole) moves data again, at any volume: the egress path does not depend on Vault, or a
#   copy of the secret exists. Revoking again changes nothing (it answers "already done"),
#   so no destructive action is proposed: humans are told at once, critically, with the
#   evidence (what moved since the revocation, and the incident that revoked it).
# custom:
#   mode: enforce
package killswitch.playbooks.use_after_revocation

import data.killswitch.lib

revoked := object.get(input.detection, "revoked", {})

# The credential that moved data: for a vendor-wide revocation, any of the vendor's.
used := sprintf("%s/%s", [input.detection.vendor, revoked.credential]) if object.get(revoked, "credential", "") != ""

used := sprintf("%s (no credential)", [input.detection.vendor]) if object.get(revoked, "credential", "") == ""

message := sprintf("Killswitch: CRITICAL use after revocation on %s: %s moved %v bytes in %v event(s) since its revocation was verified at %v (incident %v). Revoking again changes nothing: find the copy of the secret or the egress path that does not depend on Vault. %s", [
	lib.subject, used,
	object.get(revoked, "bytes", input.detection.observed), object.get(revoked, "events", 0),
	object.get(revoked, "revoked_at", "?"), object.get(revoked, "incident", "?"),
	input.detection.reason,
])

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": [lib.notify(message)],
	"requires_approval": true,
	"reason": sprintf("use after revocation on %s: data moved after the verified revocation; revoking again cannot stop it: a human must act", [lib.subject]),
	"severity": "critical",
} if {
	input.detection.detector == "use_after_revocation"
}
