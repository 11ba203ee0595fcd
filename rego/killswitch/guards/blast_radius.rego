# METADATA
# title: Approval when the budget is spent or the blast radius is large
# description: >-
#   Looks at what every playbook under killswitch.playbooks proposes for this detection and
#   holds all destructive actions for a human's approval when the revocation budget is
#   exhausted, its circuit breaker is open, or more than max_credentials credentials would
#   be hit at once.
# custom:
#   mode: enforce
package killswitch.guards.blast_radius

import data.killswitch.lib

# The most credentials one detection may take down without a human. Adapt to your estate.
max_credentials := 3

# Credentials that destructive actions proposed by the playbooks would hit.
hit contains a.credential if {
	some name
	some a in data.killswitch.playbooks[name].decision.actions
	a.type in lib.destructive_types
}

reasons contains "the revocation circuit breaker is open" if input.budget.breaker_open

reasons contains sprintf("the revocation budget is exhausted (%d of %d left in %s, %d needed)", [
	input.budget.remaining, input.budget.limit, input.budget.window, count(hit),
]) if {
	count(hit) > input.budget.remaining
}

reasons contains sprintf("%d credentials would be hit, more than %d", [count(hit), max_credentials]) if {
	count(hit) > max_credentials
}

# METADATA
# entrypoint: true
default decision := {"actions": []}

decision := {
	"actions": [lib.notify(sprintf("Killswitch: %d destructive action(s) for %s held for approval: %s.", [count(hit), lib.subject, concat("; ", lib.sort_set(reasons))]))],
	"requires_approval": true,
	"reason": concat("; ", lib.sort_set(reasons)),
	"severity": "high",
} if {
	count(hit) > 0
	count(reasons) > 0
}
