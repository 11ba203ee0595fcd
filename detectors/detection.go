package detectors

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// Kind names a detector kind.
type Kind string

// The detector kinds.
const (
	// KindCap fires when a contract limit (bytes or records per interval) is exceeded.
	KindCap Kind = "cap"
	// KindSpike fires when volume is far above the learned seasonal baseline.
	KindSpike Kind = "spike"
	// KindSustained fires on low-and-slow excess accumulated over hours.
	KindSustained Kind = "sustained"
	// KindNewDestination fires on traffic to a destination never seen for the vendor or
	// outside its allow-list.
	KindNewDestination Kind = "new_destination"
	// KindDormant fires when a normally idle credential starts moving data.
	KindDormant Kind = "dormant_credential"
	// KindSilence fires when telemetry from a vendor or sensor stops. It is an alert,
	// never grounds for revocation.
	KindSilence Kind = "silence"
	// KindUseAfterRevocation fires when a credential whose revocation was verified (or
	// any credential of a vendor cut off as a whole) moves data again: the egress path
	// does not depend on Vault, or a copy of the secret exists. Always critical.
	KindUseAfterRevocation Kind = "use_after_revocation"
)

// Kinds lists every detector kind in a stable order.
// New kinds are appended: checkpoints count detections in this order.
var Kinds = [...]Kind{KindCap, KindSpike, KindSustained, KindNewDestination, KindDormant, KindSilence, KindUseAfterRevocation}

// Severity grades a detection.
type Severity string

// The severities, from least to most severe.
const (
	SeverityInfo     Severity = "info"
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// Severities lists the severities from least to most severe.
var Severities = [...]Severity{SeverityInfo, SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// Rank orders severities: 0 for info up to 4 for critical, and -1 for an unknown one.
func (s Severity) Rank() int {
	for i, v := range Severities {
		if v == s {
			return i
		}
	}
	return -1
}

// Key identifies the stream a detector watches: a vendor's credential, or the vendor as
// a whole when Credential is empty.
type Key struct {
	Vendor     string `json:"vendor"`
	Credential string `json:"credential,omitempty"`
}

// String renders the key as vendor/credential (or vendor alone).
func (k Key) String() string {
	if k.Credential == "" {
		return k.Vendor
	}
	return k.Vendor + "/" + k.Credential
}

// Band is the expected range of an observation.
type Band struct {
	Low  float64 `json:"low"`
	High float64 `json:"high"`
}

// Window is the event-time interval a detection is about.
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Detection is what a detector emits when an observation crosses its line. It carries
// the evidence an analyst (and a playbook) needs to decide.
type Detection struct {
	// ID is deterministic: the same detector, key and window always give the same ID, so
	// a redelivered event never produces a second, different detection (it is also used as
	// the Nats-Msg-Id when the detection is published).
	ID string `json:"id"`
	// Detector is the kind of detector that fired.
	Detector Kind `json:"detector"`
	// Key is the vendor and credential the detection is about.
	Key
	// Severity grades the detection.
	Severity Severity `json:"severity"`
	// Score is the anomaly score in [0,1] of the observation that fired (≥ 0.5 fires).
	Score float64 `json:"score"`
	// Observed is the observed value (see Unit) at the crossing event.
	Observed float64 `json:"observed"`
	// Expected is the band the observation was expected to fall in.
	Expected Band `json:"expected"`
	// Unit says what Observed and Expected measure, e.g. "bytes/5m" or "records/1h".
	Unit string `json:"unit"`
	// Window is the event-time interval the observation covers.
	Window Window `json:"window"`
	// FirstAnomalousAt is the event time of the first anomalous event of this episode.
	FirstAnomalousAt time.Time `json:"first_anomalous_at"`
	// DetectedAt is the event time of the event that crossed the line.
	DetectedAt time.Time `json:"detected_at"`
	// AnomalousBytes counts the bytes sent from FirstAnomalousAt up to and including
	// the crossing event.
	AnomalousBytes int64 `json:"anomalous_bytes"`
	// Destination is the destination involved, for new_destination detections.
	Destination string `json:"destination,omitempty"`
	// Sensor is the sensor of the crossing event (or the silent sensor).
	Sensor string `json:"sensor,omitempty"`
	// Reason explains the detection in one sentence for humans.
	Reason string `json:"reason"`
	// Revoked is the evidence of a use_after_revocation detection: the revocation the
	// data moved after, and how much moved since.
	Revoked *RevokedUse `json:"revoked,omitempty"`
}

// DetectionID returns the deterministic ID of a detection of kind k for key in the
// window starting at windowStart: a hex SHA-256 prefix over the three.
func DetectionID(k Kind, key Key, windowStart time.Time) string {
	return DetectionIDFor(k, key, "", windowStart)
}

// DetectionIDFor is DetectionID with a discriminator for detectors that can fire more
// than once for the same key and window start: the destination of a new_destination
// detection, the sensor of a sensor-silence detection. An empty sub gives exactly
// DetectionID.
func DetectionIDFor(k Kind, key Key, sub string, windowStart time.Time) string {
	h := sha256.New()
	h.Write([]byte(k))
	h.Write([]byte{0})
	h.Write([]byte(key.Vendor))
	h.Write([]byte{0})
	h.Write([]byte(key.Credential))
	h.Write([]byte{0})
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(windowStart.UnixNano()))
	h.Write(b[:])
	if sub != "" {
		h.Write([]byte{0})
		h.Write([]byte(sub))
	}
	var sum [sha256.Size]byte
	return "det-" + hex.EncodeToString(h.Sum(sum[:0])[:12])
}
