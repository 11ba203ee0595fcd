# METADATA
# title: New destination needs corroboration or approval
# description: >-
#   Traffic to a destination never seen for the vendor is suspicious but is a single source
#   of evidence. When it is the only signal in the incident, the revocation is proposed and
#   held for a human's approval. When a volume detector (cap, spike, sustained, dormant
#   credential) corroborates it, the credential is revoked.
# custom:
#   mode: enforce
package killswitch.playbooks.new_destination

import data.killswitch.lib

new_destination if input.detection.detector == "new_destination"

corroborated if {
	some kind in lib.incident_kinds
	kind in lib.volume_kinds
}

message := sprintf("Killswitch: %s sends to a new destination %s. %s", [lib.subject, input.detection.destination, input.detection.reason])

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"requires_approval": true,
	"reason": sprintf("new destination %s is the only signal for %s: approval needed before revoking", [input.detection.destination, lib.subject]),
	"severity": "high",
} if {
	new_destination
	not corroborated
}

decision := {
	"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"requires_approval": count(lib.targets) == 0,
	"reason": sprintf("new destination %s for %s, corroborated by %v", [input.detection.destination, lib.subject, lib.sort_set(lib.incident_kinds & lib.volume_kinds)]),
	"severity": "critical",
} if {
	new_destination
	corroborated
}
