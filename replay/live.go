package replay

import (
	"html/template"
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
)

// ChartPoint is one interval of a key's volume for Chart: the bytes observed from Start
// for the chart's width, against the band the detectors expected.
type ChartPoint struct {
	// Start is the start of the interval.
	Start time.Time
	// Bytes is the volume observed in the interval.
	Bytes float64
	// Expected is the baseline the detectors expected, in bytes.
	Expected float64
	// High is the detection line, in bytes; +Inf (or NaN) when there is none.
	High float64
}

// Chart draws an incident's volume per interval of width against the expected band,
// with its milestones and its exposure window shaded, as the report's incident charts
// are drawn: an inline SVG that uses classes only (no style attribute, no script).
// containment names what ends an exposure window (e.g. "verified revocation"). A
// caller checks that points is not empty first.
func Chart(in *incidents.Incident, width time.Duration, points []ChartPoint, containment string) template.HTML {
	s := &series{width: width, points: make([]point, 0, len(points))}
	for _, p := range points {
		high := p.High
		if math.IsNaN(high) {
			high = math.Inf(1)
		}
		s.points = append(s.points, point{bucket: p.Start.UnixNano() / int64(width), bytes: float32(p.Bytes),
			expected: float32(p.Expected), high: float32(high)})
	}
	return chart(in, s, containment)
}

// LedgerSummary is the one-line reading of a ledger record the report's decision trail
// shows: the payload's fields worth reading.
func LedgerSummary(rec ledger.Record) string { return payloadSummary(rec) }

// FormatSeconds renders a duration in seconds as the report does (ms, s, min, h).
func FormatSeconds(sec float64) string { return duration(sec) }

// FormatBytes renders a byte count as the report does (B, KB, MB… in powers of 1000).
func FormatBytes(v float64) string { return bytesHuman(v) }
