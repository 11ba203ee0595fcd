package killswitch.playbooks.new_destination_test

import data.killswitch.lib
import data.killswitch.playbooks.new_destination

destructive(d) := {a | some a in d.actions; a.type in lib.destructive_types}

test_requires_approval_when_the_new_destination_is_the_only_signal if {
	d := new_destination.decision with input as data.inputs.new_destination_only
	d.requires_approval
	destructive(d) == {{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}}
	contains(d.reason, "only signal")
}

test_revokes_when_a_volume_detector_corroborates if {
	d := new_destination.decision with input as data.inputs.new_destination_corroborated
	d.requires_approval == false
	destructive(d) == {{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}}
	contains(d.reason, "spike")
}

test_silence_does_not_corroborate if {
	inp := json.patch(data.inputs.new_destination_only, [{"op": "add", "path": "/incident/detections/kinds/silence", "value": 1}])
	d := new_destination.decision with input as inp
	d.requires_approval
}

test_asks_a_human_when_corroborated_but_nothing_can_be_revoked if {
	inp := json.patch(data.inputs.new_destination_corroborated, [{"op": "replace", "path": "/detection/credential", "value": "mailer-breakglass"}])
	d := new_destination.decision with input as inp
	destructive(d) == set()
	d.requires_approval
}

test_does_nothing_for_other_detectors if {
	d := new_destination.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
