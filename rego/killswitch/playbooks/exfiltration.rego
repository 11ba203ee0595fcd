# METADATA
# title: Revoke on critical exfiltration
# description: >-
#   A critical cap, spike or dormant-credential detection is data leaving now: revoke the
#   credential it names (or every revocable credential of the vendor when the detection is
#   about the vendor as a whole) and tell humans. When no credential can be revoked (unknown
#   to the inventory, or protected) a human is asked instead.
# custom:
#   mode: enforce
package killswitch.playbooks.exfiltration

import data.killswitch.lib

# Detector kinds that count as exfiltration for this playbook.
exfil_kinds := {"cap", "spike", "dormant_credential"}

exfiltration if {
	input.detection.detector in exfil_kinds
	input.detection.severity == "critical"
}

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": array.concat(lib.revocations, [lib.notify(message)]),
	"reason": sprintf("critical %s on %s: revoking %d credential(s)", [input.detection.detector, lib.subject, count(lib.targets)]),
	"severity": "critical",
} if {
	exfiltration
	count(lib.targets) > 0
}

decision := {
	"actions": [lib.notify(message)],
	"requires_approval": true,
	"reason": sprintf("critical %s on %s but no credential of the inventory may be revoked: a human must decide", [input.detection.detector, lib.subject]),
	"severity": "critical",
} if {
	exfiltration
	count(lib.targets) == 0
}

message := sprintf("Killswitch: critical %s on %s (%v %s observed, expected at most %v). %s", [
	input.detection.detector, lib.subject,
	input.detection.observed, input.detection.unit, input.detection.expected.high,
	input.detection.reason,
])
