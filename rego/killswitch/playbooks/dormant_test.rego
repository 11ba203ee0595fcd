package killswitch.playbooks.dormant_test

import data.killswitch.lib
import data.killswitch.playbooks.dormant

destructive(d) := {a | some a in d.actions; a.type in lib.destructive_types}

test_requires_approval_when_the_wake_up_is_the_only_signal if {
	d := dormant.decision with input as data.inputs.dormant_woke
	d.requires_approval
	destructive(d) == {{"type": "vault.destroy_secret_id", "credential": "mailer-smtp"}}
	contains(d.reason, "approval needed")
}

test_revokes_when_a_spike_follows_in_the_incident if {
	inp := json.patch(data.inputs.dormant_woke, [
		{"op": "replace", "path": "/detection/detector", "value": "spike"},
		{"op": "add", "path": "/incident/detections/kinds/spike", "value": 1},
	])
	d := dormant.decision with input as inp
	d.requires_approval == false
	destructive(d) == {{"type": "vault.destroy_secret_id", "credential": "mailer-smtp"}}
	contains(d.reason, "spike")
}

test_a_critical_wake_up_is_left_to_the_exfiltration_playbook if {
	inp := json.patch(data.inputs.dormant_woke, [{"op": "replace", "path": "/detection/severity", "value": "critical"}])
	d := dormant.decision with input as inp
	d == {"actions": []}
}

test_asks_a_human_when_corroborated_but_nothing_can_be_revoked if {
	inp := json.patch(data.inputs.dormant_woke, [
		{"op": "replace", "path": "/detection/credential", "value": "mailer-breakglass"},
		{"op": "add", "path": "/incident/detections/kinds/sustained", "value": 1},
	])
	d := dormant.decision with input as inp
	destructive(d) == set()
	d.requires_approval
}

test_does_nothing_without_a_wake_up if {
	d := dormant.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
