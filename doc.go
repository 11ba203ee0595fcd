// Package killswitch is the domain core of Killswitch: the vendor inventory (which
// vendors there are, the credentials each holds and how each is taken away, their
// contract caps), the action types and modes every stage speaks of, and the error model
// every stage shares (retryable or permanent, with a reason).
//
// It imports no other package of the module. The stages sit below it in flow order,
// each importing only what is upstream of it:
//
//	telemetry → detectors → incidents → playbooks → actions → ledger
//
// telemetry decodes and validates egress events; detectors keep per-key event-time
// state and emit detections; incidents group them and measure the exposure window;
// playbooks (Rego, evaluated by OPA) decide; actions carry the decision out through the
// guard rails and the executors (actions/vault for Vault); ledger is the hash-chained
// audit trail every stage appends to. The pipeline package composes them for `killswitch
// run` and `killswitch replay`, which differ only in their source and their clock.
// Implementations that need NATS live in subpackages named after the dependency
// (ledger/jetstream, incidents/natskv, actions/natskv, pipeline/jetstream…).
package killswitch
