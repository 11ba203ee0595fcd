package killswitch.playbooks.silence_test

import data.killswitch.lib
import data.killswitch.playbooks.silence

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

test_notifies_only if {
	d := silence.decision with input as data.inputs.silence
	[a.type | some a in d.actions] == ["notify"]
	object.get(d, "requires_approval", false) == false
	some a in d.actions
	contains(a.message, "0 of 2 sensors reporting")
}

test_notifies_when_a_sensor_is_silent_for_every_vendor if {
	inp := json.patch(data.inputs.silence, [
		{"op": "replace", "path": "/detection/vendor", "value": ""},
		{"op": "replace", "path": "/vendor", "value": {"name": "", "known": false, "credentials": {}}},
	])
	d := silence.decision with input as inp
	[a.type | some a in d.actions] == ["notify"]
	some a in d.actions
	startswith(a.message, "Killswitch: telemetry from sensor egress-gw-1 stopped")
	d.reason == "silence from sensor egress-gw-1: alert only"
	p := proposed with input as inp
	p == set()
}

test_is_high_when_every_sensor_is_silent if {
	d := silence.decision with input as data.inputs.silence
	d.severity == "high"
}

test_is_medium_when_some_sensors_report if {
	inp := json.patch(data.inputs.silence, [{"op": "replace", "path": "/telemetry_health/sensors_reporting", "value": 1}])
	d := silence.decision with input as inp
	d.severity == "medium"
}

test_no_playbook_proposes_a_destructive_action_on_silence if {
	p := proposed with input as data.inputs.silence
	p == set()
}

test_no_playbook_revokes_on_a_critical_silence_about_a_credential if {
	inp := json.patch(data.inputs.exfil_critical, [{"op": "replace", "path": "/detection/detector", "value": "silence"}])
	p := proposed with input as inp
	p == set()
}

test_does_nothing_for_other_detectors if {
	d := silence.decision with input as data.inputs.exfil_critical
	d == {"actions": []}
}
