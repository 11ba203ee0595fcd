package killswitch.playbooks.low_and_slow_test

import data.killswitch.lib
import data.killswitch.playbooks.low_and_slow

destructive(d) := {a | some a in d.actions; a.type in lib.destructive_types}

test_quarantines_first if {
	d := low_and_slow.decision with input as data.inputs.sustained_first
	destructive(d) == {{"type": "vault.quarantine_policy", "credential": "mailer-policy"}}
	not d.requires_approval
	d.severity == "high"
}

test_revokes_when_the_excess_goes_on_after_the_quarantine if {
	d := low_and_slow.decision with input as data.inputs.sustained_after_quarantine
	destructive(d) == {{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}}
	d.requires_approval == false
	d.severity == "critical"
}

test_waits_while_the_quarantine_is_pending if {
	inp := json.patch(data.inputs.sustained_after_quarantine, [{"op": "replace", "path": "/incident/actions/0/status", "value": "held"}])
	d := low_and_slow.decision with input as inp
	d == {"actions": []}
}

test_does_not_revoke_for_excess_older_than_the_quarantine if {
	inp := json.patch(data.inputs.sustained_after_quarantine, [{"op": "replace", "path": "/detection/detected_at", "value": "2026-02-05T09:58:41Z"}])
	d := low_and_slow.decision with input as inp
	d == {"actions": []}
}

test_quarantines_again_after_a_failed_quarantine if {
	inp := json.patch(data.inputs.sustained_after_quarantine, [{"op": "replace", "path": "/incident/actions/0/status", "value": "failed"}])
	d := low_and_slow.decision with input as inp
	destructive(d) == {{"type": "vault.quarantine_policy", "credential": "mailer-policy"}}
}

test_holds_the_revocation_when_nothing_can_be_quarantined if {
	inp := json.patch(data.inputs.sustained_first, [{"op": "remove", "path": "/vendor/credentials/mailer-policy"}])
	d := low_and_slow.decision with input as inp
	destructive(d) == {{"type": "vault.revoke_token_accessor", "credential": "mailer-api"}}
	d.requires_approval
}

test_asks_a_human_when_nothing_can_be_revoked_after_the_quarantine if {
	inp := json.patch(data.inputs.sustained_after_quarantine, [{"op": "replace", "path": "/detection/credential", "value": "mailer-breakglass"}])
	d := low_and_slow.decision with input as inp
	destructive(d) == set()
	d.requires_approval
}

test_does_nothing_for_other_detectors if {
	d := low_and_slow.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
