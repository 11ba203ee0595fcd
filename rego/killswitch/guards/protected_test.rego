package killswitch.guards.protected_test

import data.killswitch.guards.protected

test_tells_humans_about_a_detection_on_a_protected_credential if {
	d := protected.decision with input as data.inputs.exfil_protected
	[a.type | some a in d.actions] == ["notify"]
	object.get(d, "requires_approval", false) == false
	contains(d.reason, "mailer/mailer-breakglass")
}

test_holds_everything_when_a_playbook_targets_a_protected_credential if {
	d := protected.decision with input as data.inputs.exfil_critical
		with data.killswitch.playbooks.exfiltration.decision as {
			"actions": [{"type": "vault.revoke_token_accessor", "credential": "mailer-breakglass"}],
			"reason": "a buggy playbook",
		}
	d.requires_approval
	d.reason == "playbooks targeted protected credentials: exfiltration -> mailer-breakglass"
}

test_does_nothing_otherwise if {
	d := protected.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
