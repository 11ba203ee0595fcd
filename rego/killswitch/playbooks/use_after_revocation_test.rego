package killswitch.playbooks.use_after_revocation_test

import data.killswitch.lib
import data.killswitch.playbooks.use_after_revocation

# Every destructive action any playbook or guard proposes for the input.
proposed contains a if {
	some name
	some a in data.killswitch.playbooks[name].decision.actions
	a.type in lib.destructive_types
}

proposed contains a if {
	some name
	some a in data.killswitch.guards[name].decision.actions
	a.type in lib.destructive_types
}

test_escalates_to_a_human_critically if {
	d := use_after_revocation.decision with input as data.inputs.use_after_revocation
	[a.type | some a in d.actions] == ["notify"]
	d.requires_approval
	d.severity == "critical"
}

test_message_carries_the_evidence if {
	d := use_after_revocation.decision with input as data.inputs.use_after_revocation
	some a in d.actions
	contains(a.message, "use after revocation on mailer/mailer-api")
	contains(a.message, "18231 bytes in 2 event(s)")
	contains(a.message, "2026-02-05T10:01:13.31Z")
	contains(a.message, "inc-mailer-20260205-1")
}

# Revoking again answers "already done": no playbook loops on it.
test_no_playbook_proposes_a_destructive_action if {
	p := proposed with input as data.inputs.use_after_revocation
	p == set()
}

test_no_playbook_revokes_after_a_vendor_wide_cut_off if {
	inp := json.patch(data.inputs.use_after_revocation, [
		{"op": "remove", "path": "/detection/credential"},
		{"op": "replace", "path": "/detection/revoked/credential", "value": "mailer-smtp"},
		{"op": "add", "path": "/detection/revoked/vendor_wide", "value": true},
	])
	p := proposed with input as inp
	p == set()
	d := use_after_revocation.decision with input as inp
	some a in d.actions
	contains(a.message, "use after revocation on mailer: mailer/mailer-smtp moved")
}

test_works_without_the_evidence_object if {
	inp := json.patch(data.inputs.use_after_revocation, [{"op": "remove", "path": "/detection/revoked"}])
	d := use_after_revocation.decision with input as inp
	d.severity == "critical"
	some a in d.actions
	contains(a.message, "mailer (no credential) moved 18231 bytes")
}

test_does_nothing_for_other_detectors if {
	d := use_after_revocation.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
