# METADATA
# title: Revoke after a veto window
# description: >-
#   A credential that crosses its contract cap is revoked 90 seconds after Killswitch
#   announces it (on killswitch.notify.<vendor>, killswitch.events.action.<vendor> and
#   GET /api/approvals), unless the person on call vetoes it meanwhile
#   (`killswitch veto ID`). The wait counts in the incident's exposure window.
# custom:
#   mode: enforce
package killswitch.playbooks.veto_window

# How long on-call has to veto: long enough to read the page, short enough to matter.
window := "90s"

credential := object.get(input.detection, "credential", "")

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": [
		{"type": input.vendor.credentials[credential].action, "credential": credential},
		{"type": "notify", "message": sprintf("Killswitch revokes %s/%s in %s unless vetoed: killswitch veto ID", [input.detection.vendor, credential, window])},
	],
	"veto_window": window,
	"reason": sprintf("%s/%s crossed its cap: revoking after a %s veto window", [input.detection.vendor, credential, window]),
	"severity": "high",
} if {
	input.detection.detector == "cap"
	not input.vendor.credentials[credential].protected
}
