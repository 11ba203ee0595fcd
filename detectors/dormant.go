package detectors

import (
	"fmt"
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// The dormant-credential detector. A credential that moved no data for DormantAfter
// and then moves data fires on that event; a credential marked ExpectedIdle in the
// inventory fires on any data it moves. Idleness is measured on the vendor's observed
// clock (its first event time plus its observed history, see activity.hist): the
// vendor's observed history since the credential last moved data. So a credential is
// dormant when it moved nothing while its vendor kept sending, and one event dated
// decades ago cannot make it look idle for decades (a jump adds at most
// MaxObservedGap; a late event counts at its vendor's latest time). The episode (one
// usage session) ends once the credential has moved nothing for SilenceAfter; only
// then can it fire again (for a credential that is not ExpectedIdle, only after
// another DormantAfter of idleness). A credential first seen in telemetry has no
// history and does not fire unless it is ExpectedIdle.
//
// t is the event time the event counts at (ns) and ot the same instant on the
// vendor's observed clock; k.lastData is on the observed clock.
func (e *Engine) dormant(v *vendorState, k *keyState, t, ot int64, ev *telemetry.Event, emit func(Detection)) {
	if ev.Bytes <= 0 {
		return
	}
	sec := unixSeconds(ot)
	prev := int64(k.lastData) * int64(time.Second)
	seen := k.has(flagDataSeen)
	if sec > k.lastData || !seen {
		k.lastData = sec
		k.flags |= flagDataSeen
	}
	if v.cfg.disabled.has(KindDormant) {
		return
	}
	idle := time.Duration(ot - prev)
	if k.has(flagDormant) {
		if seen && idle >= e.set.silenceAfter {
			k.flags &^= flagDormant // the previous session ended
		} else {
			return
		}
	}
	expected := k.has(flagExpectedIdle)
	if !expected && (!seen || idle < e.set.dormantAfter) {
		return
	}
	k.flags |= flagDormant
	key := e.key(v, k)
	// A credential the inventory says is normally idle (break-glass) moving data is
	// critical; one that merely has not been used for a while is high.
	score, sev := 1.0, SeverityCritical
	reason := fmt.Sprintf("credential %s, marked as normally idle in the inventory, moved %s to %s", key, formatBytes(float64(ev.Bytes)), orUnknown(ev.Dst))
	win := Window{Start: utc(t), End: utc(t)}
	if seen {
		win.Start = utc(t - int64(idle)) // the last use, in event time (exact unless the vendor skipped time since)
	}
	if !expected {
		sev = SeverityHigh
		score = ratioScore(idle.Hours(), e.set.dormantAfter.Hours())
		reason = fmt.Sprintf("credential %s moved %s to %s after %s without moving any data (dormant after %s)",
			key, formatBytes(float64(ev.Bytes)), orUnknown(ev.Dst), idle.Round(time.Minute), e.set.dormantAfter)
	}
	observed := 0.0
	if seen {
		observed = idle.Hours()
	}
	e.emit(emit, Detection{
		ID:               DetectionID(KindDormant, key, utc(t)),
		Detector:         KindDormant,
		Key:              key,
		Severity:         sev,
		Score:            score,
		Observed:         observed,
		Expected:         Band{Low: 0, High: e.set.dormantAfter.Hours()},
		Unit:             "hours idle",
		Window:           win,
		FirstAnomalousAt: utc(t),
		DetectedAt:       utc(t),
		AnomalousBytes:   ev.Bytes,
		Destination:      ev.Dst,
		Sensor:           ev.Sensor,
		Reason:           reason,
	})
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown destination"
	}
	return s
}

// unixSeconds returns event time t (ns) as a Unix second, clamped to uint32.
func unixSeconds(t int64) uint32 {
	return uint32(min(max(floorDiv(t, int64(time.Second)), 0), math.MaxUint32))
}
