package killswitch.playbooks.exfiltration_test

import data.killswitch.lib
import data.killswitch.playbooks.exfiltration

destructive(d) := {a | some a in d.actions; a.type in lib.destructive_types}

test_revokes_the_credential_on_a_critical_spike if {
	d := exfiltration.decision with input as data.inputs.exfil_critical
	destructive(d) == {{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}}
	not d.requires_approval
	d.severity == "critical"
	some a in d.actions
	a.type == "notify"
}

test_revokes_every_revocable_credential_on_a_vendor_wide_cap if {
	d := exfiltration.decision with input as data.inputs.exfil_vendor_wide
	destructive(d) == {
		{"type": "vault.revoke_token_accessor", "credential": "mailer-api"},
		{"type": "vault.destroy_secret_id", "credential": "mailer-smtp"},
	}
	not d.requires_approval
}

test_revokes_on_a_critical_dormant_credential if {
	d := exfiltration.decision with input as data.inputs.exfil_breaker_open
	destructive(d) == {{"type": "vault.destroy_secret_id", "credential": "mailer-smtp"}}
}

test_does_nothing_below_critical if {
	d := exfiltration.decision with input as data.inputs.spike_medium
	d == {"actions": []}
}

test_does_nothing_for_other_detectors if {
	inp := json.patch(data.inputs.exfil_critical, [{"op": "replace", "path": "/detection/detector", "value": "sustained"}])
	d := exfiltration.decision with input as inp
	d == {"actions": []}
}

test_asks_a_human_when_the_credential_is_protected if {
	d := exfiltration.decision with input as data.inputs.exfil_protected
	destructive(d) == set()
	d.requires_approval
	[a.type | some a in d.actions] == ["notify"]
}

test_asks_a_human_when_the_credential_is_not_in_the_inventory if {
	inp := json.patch(data.inputs.exfil_critical, [{"op": "replace", "path": "/detection/credential", "value": "ghost"}])
	d := exfiltration.decision with input as inp
	destructive(d) == set()
	d.requires_approval
}

test_message_carries_the_evidence if {
	d := exfiltration.decision with input as data.inputs.exfil_critical
	some a in d.actions
	a.type == "notify"
	contains(a.message, "mailer/mailer-api")
	contains(a.message, "25x its seasonal baseline")
}
