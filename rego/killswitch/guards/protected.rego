# METADATA
# title: Protected credentials are never targets
# description: >-
#   Break-glass, operator and root credentials (protected: true in the inventory) are never
#   revoked automatically. When a detection is about one, humans are told and asked to look;
#   when any playbook proposes a destructive action against one (a playbook bug), every
#   destructive action is held for approval. The engine drops such actions as well.
# custom:
#   mode: enforce
package killswitch.guards.protected

import data.killswitch.lib

protected contains name if {
	some name, cred in input.vendor.credentials
	cred.protected
}

# Playbooks proposing a destructive action against a protected credential.
offenders contains sprintf("%s -> %s", [name, a.credential]) if {
	some name
	some a in data.killswitch.playbooks[name].decision.actions
	a.type in lib.destructive_types
	a.credential in protected
}

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": [lib.notify(sprintf("Killswitch: %s detection on protected credential %s; it is never revoked automatically, a human must look. %s", [input.detection.detector, lib.subject, input.detection.reason]))],
	"reason": sprintf("detection on protected credential %s: notify only", [lib.subject]),
	"severity": "high",
} if {
	lib.credential in protected
	count(offenders) == 0
}

decision := {
	"actions": [lib.notify(sprintf("Killswitch: playbooks proposed destructive actions against protected credentials (%s); all destructive actions are held.", [concat(", ", lib.sort_set(offenders))]))],
	"requires_approval": true,
	"reason": sprintf("playbooks targeted protected credentials: %s", [concat(", ", lib.sort_set(offenders))]),
	"severity": "critical",
} if {
	count(offenders) > 0
}
