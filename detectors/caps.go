package detectors

import (
	"fmt"
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// The cap detector: a contract limit (bytes and/or records per Per, in tumbling
// windows aligned to the epoch) for a vendor's total or one credential. It fires on
// the event that makes the window's running sum exceed the limit, once per window.
// Events out of order within the allowed lateness count in their own window; later
// ones count in the current window.

type capState struct {
	win              int64 // current window index
	bytes, records   int64
	pBytes, pRecords int64 // window win-1 while it is still open
	started          bool
	fired, pFired    bool
	prevOpen         bool
}

func (e *Engine) capCheck(v *vendorState, ev *telemetry.Event, t int64, emit func(Detection)) {
	if v.cfg.disabled.has(KindCap) {
		return
	}
	wm := v.maxT - int64(e.set.lateness)
	for i := range v.caps {
		spec := &v.cfg.caps[i]
		if spec.credential != "" && spec.credential != ev.Credential {
			continue
		}
		c := &v.caps[i]
		per := int64(spec.per)
		w := floorDiv(t, per)
		switch {
		case !c.started:
			*c = capState{win: w, started: true}
		case w > c.win:
			c.pBytes, c.pRecords, c.pFired = c.bytes, c.records, c.fired
			c.prevOpen = w == c.win+1 && (c.win+1)*per > wm
			c.win, c.bytes, c.records, c.fired = w, 0, 0, false
		}
		if w == c.win-1 && c.prevOpen && (w+1)*per > wm {
			c.pBytes += ev.Bytes
			c.pRecords += ev.Records
			if !c.pFired && capExceeded(spec, c.pBytes, c.pRecords) {
				c.pFired = true
				e.emit(emit, e.capDetection(v, spec, w, c.pBytes, c.pRecords, t, ev))
			}
			continue
		}
		c.bytes += ev.Bytes
		c.records += ev.Records
		if !c.fired && capExceeded(spec, c.bytes, c.records) {
			c.fired = true
			e.emit(emit, e.capDetection(v, spec, c.win, c.bytes, c.records, t, ev))
		}
	}
}

func capExceeded(s *capSpec, bytes, records int64) bool {
	return (s.bytes > 0 && bytes > s.bytes) || (s.records > 0 && records > s.records)
}

func (e *Engine) capDetection(v *vendorState, s *capSpec, w, bytes, records, t int64, ev *telemetry.Event) Detection {
	key := Key{Vendor: v.name, Credential: s.credential}
	per := shortDuration(s.per)
	observed, limit, unit := float64(bytes), float64(s.bytes), "bytes/"+per
	if s.bytes <= 0 || (s.records > 0 && float64(records)/float64(s.records) > float64(bytes)/float64(s.bytes)) {
		observed, limit, unit = float64(records), float64(s.records), "records/"+per
	}
	mag := observed / math.Max(limit, 1)
	start := w * int64(s.per)
	what := "vendor " + v.name
	if s.credential != "" {
		what = "credential " + key.String()
	}
	return Detection{
		ID:               DetectionID(KindCap, key, utc(start)),
		Detector:         KindCap,
		Key:              key,
		Severity:         severity(KindCap, s.credential != "", mag),
		Score:            ratioScore(mag, 1),
		Observed:         observed,
		Expected:         Band{Low: 0, High: limit},
		Unit:             unit,
		Window:           Window{Start: utc(start), End: utc(start + int64(s.per))},
		FirstAnomalousAt: utc(t),
		DetectedAt:       utc(t),
		AnomalousBytes:   ev.Bytes,
		Destination:      ev.Dst,
		Sensor:           ev.Sensor,
		Reason: fmt.Sprintf("%s exceeded its contract cap: %.0f %s in the window starting %s, limit %.0f",
			what, observed, unit, utc(start).Format(time.RFC3339), limit),
	}
}
