package killswitch.guards.blast_radius_test

import data.killswitch.guards.blast_radius

test_holds_everything_when_the_budget_is_exhausted if {
	d := blast_radius.decision with input as data.inputs.exfil_budget_exhausted
	d.requires_approval
	contains(d.reason, "budget is exhausted (0 of 10 left in 1h0m0s, 1 needed)")
}

test_holds_everything_when_the_breaker_is_open if {
	d := blast_radius.decision with input as data.inputs.exfil_breaker_open
	d.requires_approval
	d.reason == "the revocation circuit breaker is open"
}

test_holds_everything_when_too_many_credentials_would_be_hit if {
	d := blast_radius.decision with input as data.inputs.blast_radius
	d.requires_approval
	contains(d.reason, "6 credentials would be hit, more than 3")
}

test_holds_when_the_budget_is_smaller_than_the_blast if {
	inp := json.patch(data.inputs.exfil_vendor_wide, [{"op": "replace", "path": "/budget/remaining", "value": 1}])
	d := blast_radius.decision with input as inp
	d.requires_approval
	contains(d.reason, "1 of 10 left in 1h0m0s, 2 needed")
}

test_lets_a_small_revocation_within_budget_through if {
	d := blast_radius.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}

test_ignores_the_budget_when_nothing_destructive_is_proposed if {
	inp := json.patch(data.inputs.silence, [{"op": "replace", "path": "/budget/breaker_open", "value": true}])
	d := blast_radius.decision with input as inp
	d == {"actions": []}
}

test_counts_what_a_user_playbook_proposes if {
	d := blast_radius.decision with input as data.inputs.spike_medium
		with data.killswitch.playbooks.extra.decision as {"actions": [
			{"type": "vault.revoke_lease_prefix", "credential": "a"},
			{"type": "vault.revoke_lease_prefix", "credential": "b"},
			{"type": "vault.revoke_lease_prefix", "credential": "c"},
			{"type": "vault.revoke_lease_prefix", "credential": "d"},
		]}
	d.requires_approval
}
