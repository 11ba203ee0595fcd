# METADATA
# title: Silence is an alert, never a revocation
# description: >-
#   When telemetry from a vendor or a sensor stops, nothing proves data is leaving and
#   revoking would punish a broken sensor. Notify humans, with the telemetry health, and
#   never propose a destructive action.
# custom:
#   mode: enforce
package killswitch.playbooks.silence

import data.killswitch.lib

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": [lib.notify(sprintf("Killswitch: telemetry from %s stopped (sensor %q; %d of %d sensors reporting). %s", [
		lib.subject, input.detection.sensor,
		input.telemetry_health.sensors_reporting, input.telemetry_health.sensors_expected,
		input.detection.reason,
	]))],
	"reason": sprintf("silence from %s: alert only", [lib.subject]),
	"severity": severity,
} if {
	input.detection.detector == "silence"
}

# Every sensor silent is worse than one.
default severity := "medium"

severity := "high" if input.telemetry_health.sensors_reporting == 0
