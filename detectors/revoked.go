package detectors

import (
	"fmt"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// The use-after-revocation detector. Once an incident is contained (a destructive
// action on its credential was verified), any data moved on that credential — any
// volume, one byte is enough — means the egress path does not depend on the revoked
// secret, or a copy of it exists elsewhere: a critical detection of its own kind. A
// vendor-wide containment (the incident is about the vendor as a whole) makes data
// moved on any credential of the vendor count, and data without a credential too.
//
// The engine learns what was revoked, and when, from a Revocations (the pipeline
// implements it from the responder's incidents), and caches it per vendor until its
// Version changes: a vendor with nothing revoked costs one atomic load per event.
//
// Bounded: at most one detection per credential (per revocation) per Interval bucket of
// the time the event counts at (its vendor's bounded clock, see the clock guard): the
// first event moving data in a bucket fires at once, later events of the bucket only
// add to the evidence (events and bytes since the revocation) that the next detection
// carries. A bucket earlier than the last one fired never fires again, so forged event
// times cannot make an event fire twice; an event dated before the revocation (its own
// time, accepted by the clock guard) or at its very time (the event whose detection
// led to the revocation, in replay) does not count at all, and the detector runs
// before the others on each event, so a revocation decided on an event's own
// detections never applies to that event. The evidence is kept per
// revoked (vendor, credential) actually used and dropped when the revocation ends; it
// is not checkpointed (after a restore the counts start again; the detection IDs of a
// bucket are the same, so a redelivered event does not make a second detection).

// Revocations tells the engine which credentials were revoked and since when. It is
// called from every shard's goroutine and must be safe for concurrent use.
type Revocations interface {
	// Version changes whenever the revocations change. It is called on every event of
	// a vendor: it must be cheap (an atomic load).
	Version() uint64
	// Revoked returns the revocations in effect for vendor. The engine keeps the slice
	// until Version changes and never modifies it.
	Revoked(vendor string) []Revocation
}

// Revocation is one revocation in effect: data moved on Credential (any credential of
// the vendor when empty) at or after Since is a use after revocation.
type Revocation struct {
	// Credential is the credential revoked; "" when the whole vendor was cut off.
	Credential string `json:"credential,omitempty"`
	// Since is when the revocation was verified (the incident's containment).
	Since time.Time `json:"since"`
	// Incident is the incident whose action revoked it.
	Incident string `json:"incident"`
	// Until, when set, ends the watch: data counted at a later time (the time the
	// detection would carry) is not a use after revocation.
	Until time.Time `json:"until,omitzero"`
}

// RevokedUse is the evidence of a use_after_revocation detection.
type RevokedUse struct {
	// Incident is the incident whose verified action revoked the credential.
	Incident string `json:"incident"`
	// RevokedAt is when the revocation was verified.
	RevokedAt time.Time `json:"revoked_at"`
	// Credential is the credential that moved data ("" for data without one); for a
	// vendor-wide revocation it may be any credential of the vendor.
	Credential string `json:"credential,omitempty"`
	// VendorWide says the revocation cut off the whole vendor.
	VendorWide bool `json:"vendor_wide,omitempty"`
	// Events and Bytes count what moved on Credential since the revocation, up to and
	// including the event that fired.
	Events int64 `json:"events"`
	Bytes  int64 `json:"bytes"`
	// NewBytes is the part of Bytes moved since the previous detection of this use
	// (all of Bytes for the first): summing NewBytes over the detections counts every
	// byte once.
	NewBytes int64 `json:"new_bytes"`
}

// WithRevocations makes the engine run the use_after_revocation detector against r.
func WithRevocations(r Revocations) Option { return func(o *options) { o.revocations = r } }

// revCache is a vendor's cached revocations.
type revCache struct {
	version uint64
	list    []Revocation
}

// useKey identifies one revoked credential in use: the vendor, the credential moving
// data and the incident of the revocation it counts against.
type useKey struct {
	vendor     uint32
	credential string
	incident   string
}

// useState is the evidence of one revoked credential in use.
type useState struct {
	fired    bool
	bucket   uint32 // the bucket of the last detection (when fired)
	first    int64  // event time of the first event after the revocation (ns)
	events   int64
	bytes    int64
	reported int64 // bytes carried by the detections so far
}

// refreshRevoked brings v's cached revocations up to date and drops the evidence of
// the revocations that ended.
func (e *Engine) refreshRevoked(vi uint32, v *vendorState, ver uint64) {
	v.revs = revCache{version: ver, list: e.revs.Revoked(v.name)}
	for k := range e.uses {
		if k.vendor != vi {
			continue
		}
		live := false
		for _, r := range v.revs.list {
			if r.Incident == k.incident {
				live = true
				break
			}
		}
		if !live {
			delete(e.uses, k)
		}
	}
}

// useAfterRevocation runs the detector on one event of vendor v: t is the event's own
// time and tb the time it counts at (ns).
func (e *Engine) useAfterRevocation(vi uint32, v *vendorState, ev *telemetry.Event, t, tb int64, emit func(Detection)) {
	if ver := e.revs.Version(); ver != v.revs.version {
		e.refreshRevoked(vi, v, ver)
	}
	if len(v.revs.list) == 0 || ev.Bytes <= 0 || v.cfg.disabled.has(KindUseAfterRevocation) {
		return
	}
	// The credential's own revocation wins over a vendor-wide one.
	var rev *Revocation
	for i := range v.revs.list {
		r := &v.revs.list[i]
		if r.Credential != "" && r.Credential == ev.Credential {
			rev = r
			break
		}
		if r.Credential == "" && rev == nil {
			rev = r
		}
	}
	if rev == nil || t <= rev.Since.UnixNano() || (!rev.Until.IsZero() && tb > rev.Until.UnixNano()) {
		return // not revoked, moved before (or with) the revocation, or after the watch
	}
	if e.uses == nil {
		e.uses = make(map[useKey]*useState)
	}
	uk := useKey{vendor: vi, credential: ev.Credential, incident: rev.Incident}
	u := e.uses[uk]
	if u == nil {
		uk.credential = strings.Clone(uk.credential) // not the event's buffer
		u = &useState{first: t}
		e.uses[uk] = u
	}
	u.events++
	u.bytes += ev.Bytes
	b := e.bucketOf(tb)
	if u.fired && b <= u.bucket {
		return // one detection per bucket: this event is evidence for the next one
	}
	u.fired, u.bucket = true, b
	newBytes := u.bytes - u.reported
	u.reported = u.bytes
	key := Key{Vendor: v.name, Credential: rev.Credential}
	used := "data without a credential"
	if ev.Credential != "" {
		used = "credential " + v.name + "/" + ev.Credential
	}
	revokedAt := rev.Since.UTC()
	what := "revoked"
	if rev.Credential == "" {
		what = "cut off with its whole vendor"
	}
	e.emit(emit, Detection{
		ID:               DetectionIDFor(KindUseAfterRevocation, key, rev.Incident+"\x00"+ev.Credential, utc(e.bucketStart(b))),
		Detector:         KindUseAfterRevocation,
		Key:              key,
		Severity:         SeverityCritical,
		Score:            1,
		Observed:         float64(u.bytes),
		Expected:         Band{Low: 0, High: 0},
		Unit:             "bytes since revocation",
		Window:           Window{Start: revokedAt, End: utc(tb)},
		FirstAnomalousAt: utc(u.first),
		DetectedAt:       utc(tb),
		AnomalousBytes:   u.bytes,
		Destination:      ev.Dst,
		Sensor:           ev.Sensor,
		Reason: fmt.Sprintf("%s moved %s to %s after it was %s at %s (incident %s): %d event(s), %s since; the egress path does not depend on Vault, or a copy of the secret exists",
			used, formatBytes(float64(ev.Bytes)), orUnknown(ev.Dst), what, revokedAt.Format(time.RFC3339), rev.Incident,
			u.events, formatBytes(float64(u.bytes))),
		Revoked: &RevokedUse{
			Incident: rev.Incident, RevokedAt: revokedAt, Credential: ev.Credential, VendorWide: rev.Credential == "",
			Events: u.events, Bytes: u.bytes, NewBytes: newBytes,
		},
	})
}
