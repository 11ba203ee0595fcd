# METADATA
# title: Quarantine, then revoke, on sustained low-and-slow
# description: >-
#   A sustained detection is slow, steady excess. The first time, quarantine the vendor's
#   policies (a reversible deny-all) and tell humans. If the excess goes on after the
#   quarantine was applied, revoke the credential. When the vendor has no policy that can be
#   quarantined, the revocation is proposed but held for approval.
# custom:
#   mode: enforce
package killswitch.playbooks.low_and_slow

import data.killswitch.lib

sustained if input.detection.detector == "sustained"

# Quarantine actions already in the incident that are in flight or done.
quarantines contains a if {
	some a in input.incident.actions
	a.type == "vault.quarantine_policy"
	a.status in {"planned", "held", "applied", "verified"}
}

# A quarantine that took effect before this detection was raised.
quarantine_effective if {
	some a in quarantines
	a.status in {"applied", "verified"}
	time.parse_rfc3339_ns(a.at) < time.parse_rfc3339_ns(input.detection.detected_at)
}

# METADATA
# entrypoint: true
default decision := {"actions": []}

# Stage 1: quarantine (reversible).
decision := {
	"actions": array.concat(
		[lib.quarantine(name) | some name in lib.sort_set(lib.quarantinable)],
		[lib.notify(sprintf("Killswitch: sustained excess on %s; quarantining %d policy(ies), revocation follows if it goes on. %s", [lib.subject, count(lib.quarantinable), input.detection.reason]))],
	),
	"reason": sprintf("sustained excess on %s: quarantine first (reversible)", [lib.subject]),
	"severity": "high",
} if {
	sustained
	count(quarantines) == 0
	count(lib.quarantinable) > 0
}

# Stage 1 without anything to quarantine: propose the revocation, held for approval.
decision := {
	"actions": array.concat(lib.revocations, [lib.notify(sprintf("Killswitch: sustained excess on %s and no policy to quarantine; revocation awaits approval. %s", [lib.subject, input.detection.reason]))]),
	"requires_approval": true,
	"reason": sprintf("sustained excess on %s, nothing to quarantine: revocation needs approval", [lib.subject]),
	"severity": "high",
} if {
	sustained
	count(quarantines) == 0
	count(lib.quarantinable) == 0
}

# Stage 2: the excess goes on after the quarantine took effect: revoke.
decision := {
	"actions": array.concat(lib.revocations, [lib.notify(sprintf("Killswitch: sustained excess on %s continues after quarantine; revoking. %s", [lib.subject, input.detection.reason]))]),
	"requires_approval": count(lib.targets) == 0,
	"reason": sprintf("sustained excess on %s continues after quarantine: revoking %d credential(s)", [lib.subject, count(lib.targets)]),
	"severity": "critical",
} if {
	sustained
	quarantine_effective
}
