package killswitch.lib_test

import data.killswitch.lib

test_revocable_leaves_out_protected_credentials_and_policies if {
	r := lib.revocable with input as data.inputs.exfil_critical
	r == {"mailer-api", "mailer-smtp"}
}

test_quarantinable_is_the_unprotected_policies if {
	q := lib.quarantinable with input as data.inputs.exfil_critical
	q == {"mailer-policy"}
}

test_targets_the_detection_credential if {
	t := lib.targets with input as data.inputs.exfil_critical
	t == {"mailer-api"}
}

test_targets_every_revocable_credential_for_a_vendor_wide_detection if {
	t := lib.targets with input as data.inputs.exfil_vendor_wide
	t == {"mailer-api", "mailer-smtp"}
}

test_never_targets_a_protected_credential if {
	t := lib.targets with input as data.inputs.exfil_protected
	t == set()
}

test_never_targets_a_credential_outside_the_inventory if {
	inp := json.patch(data.inputs.exfil_critical, [{"op": "replace", "path": "/detection/credential", "value": "ghost"}])
	t := lib.targets with input as inp
	t == set()
}

test_revoke_uses_the_credential_action if {
	a := lib.revoke("mailer-smtp") with input as data.inputs.exfil_critical
	a == {"type": "vault.destroy_secret_id", "credential": "mailer-smtp"}
}

test_subject_names_vendor_and_credential if {
	lib.subject == "mailer/mailer-api" with input as data.inputs.exfil_critical
	lib.subject == "mailer" with input as data.inputs.exfil_vendor_wide
}

test_incident_kinds_ignore_zero_counts if {
	inp := json.patch(data.inputs.new_destination_corroborated, [{"op": "replace", "path": "/incident/detections/kinds/spike", "value": 0}])
	k := lib.incident_kinds with input as inp
	k == {"new_destination"}
}
