package killswitch.playbooks.veto_window_test

import data.killswitch.playbooks.veto_window

cap_crossing := {
	"detection": {"detector": "cap", "vendor": "mailer", "credential": "mailer-api", "severity": "critical"},
	"vendor": {"name": "mailer", "credentials": {
		"mailer-api": {"kind": "token", "action": "vault.revoke_token_accessor", "protected": false},
		"mailer-breakglass": {"kind": "token", "action": "vault.revoke_token_accessor", "protected": true},
	}},
}

test_a_cap_crossing_is_revoked_after_a_veto_window if {
	d := veto_window.decision with input as cap_crossing
	d.veto_window == "90s"
	{"type": "vault.revoke_token_accessor", "credential": "mailer-api"} in d.actions
	not object.get(d, "requires_approval", false)
}

test_a_protected_credential_is_left_alone if {
	inp := json.patch(cap_crossing, [{"op": "replace", "path": "/detection/credential", "value": "mailer-breakglass"}])
	d := veto_window.decision with input as inp
	d == {"actions": []}
}

test_other_detectors_do_nothing if {
	inp := json.patch(cap_crossing, [{"op": "replace", "path": "/detection/detector", "value": "spike"}])
	d := veto_window.decision with input as inp
	d == {"actions": []}
}
