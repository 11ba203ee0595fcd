# METADATA
# title: Console test playbook
# description: >-
#   For the console's browser test only: a cap crossing by mailer or erp is revoked
#   after an approval; one by crm is revoked after a 30 s veto window.
# custom:
#   mode: enforce
package killswitch.playbooks.console_test_policy

credential := object.get(input.detection, "credential", "")

revoke := [{"type": input.vendor.credentials[credential].action, "credential": credential}]

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": revoke,
	"requires_approval": true,
	"reason": sprintf("%s/%s crossed its cap: revoke after an approval", [input.detection.vendor, credential]),
	"severity": "critical",
} if {
	input.detection.detector == "cap"
	input.detection.vendor in {"mailer", "erp"}
}

decision := {
	"actions": revoke,
	"veto_window": "30s",
	"reason": sprintf("%s/%s crossed its cap: revoking after a 30s veto window", [input.detection.vendor, credential]),
	"severity": "high",
} if {
	input.detection.detector == "cap"
	input.detection.vendor == "crm"
}
