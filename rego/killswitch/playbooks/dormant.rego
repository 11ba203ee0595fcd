# METADATA
# title: A dormant credential wakes up
# description: >-
#   A credential that moved no data for a long time starts moving data. A credential the
#   inventory marks expected_idle (break-glass, batch-only) makes the detection critical,
#   and the exfiltration playbook revokes it. Any other dormant credential is proposed for
#   revocation and held for a human's approval, until a volume detector (cap, spike,
#   sustained) in the same incident corroborates it: then it is revoked.
# custom:
#   mode: enforce
package killswitch.playbooks.dormant

import data.killswitch.lib

# Volume detectors that corroborate a wake-up.
corroborating_kinds := {"cap", "spike", "sustained"}

woke if "dormant_credential" in lib.incident_kinds

corroborated if {
	some kind in lib.incident_kinds
	kind in corroborating_kinds
}

message := sprintf("Killswitch: %s moves data after being dormant. %s", [lib.subject, input.detection.reason])

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"requires_approval": true,
	"reason": sprintf("dormant credential %s woke up, with no volume detector to corroborate it: approval needed before revoking", [lib.subject]),
	"severity": "high",
} if {
	input.detection.detector == "dormant_credential"
	input.detection.severity != "critical"
	not corroborated
}

decision := {
	"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"requires_approval": count(lib.targets) == 0,
	"reason": sprintf("dormant credential %s woke up and %v confirm data is leaving: revoking", [lib.subject, lib.sort_set(lib.incident_kinds & corroborating_kinds)]),
	"severity": "critical",
} if {
	woke
	corroborated
	input.detection.detector in lib.volume_kinds
}
