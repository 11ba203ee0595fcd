package detectors

import (
	"fmt"
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// The silence detector. A vendor, or a sensor (over all the vendors it reports), is
// "regular" once
// its observed history (see activity.hist) reaches the learning period, it has been
// seen in at least regularBuckets distinct
// buckets, with an (exponentially weighted) mean gap between active buckets of at most
// half of SilenceAfter. A regular source raises one silence alert when it has sent
// nothing for SilenceAfter and for more than twice the longest gap it has recently had
// starting at the same hour of the day (so a source that is quiet every night is not
// reported every night). The episode ends with the source's next event. Silence is
// always an alert: its severity is at most medium and playbooks must never revoke on
// it (G8).
//
// It is evaluated on Tick (processing time, from the injected clock) and whenever event
// time advances through any vendor's events, so replay finds the same silences. The
// detection time is always the moment the silence crossed its line (the last event
// time plus the line), so it does not depend on when the check ran.

const regularBuckets = 6

// activity tracks when a source last sent and how regularly.
type activity struct {
	firstT   int64   // first event time (ns)
	lastT    int64   // last event time (ns)
	lastB    uint32  // bucket of lastT
	gap      float32 // EW mean gap between active buckets, in buckets
	buckets  uint16  // active buckets seen (saturating)
	lastHour uint8   // hour of the day of lastB
	silent   bool    // a silence episode is active
	// hist is the observed history (ns): the sum of the gaps between consecutive
	// event times (in event-time order), each at most MaxObservedGap. One event dated
	// decades before the next adds only MaxObservedGap.
	hist int64
	// hourGap is, per hour of the day (UTC) of its start, the longest recent gap in
	// buckets between two active buckets; each new gap starting in that hour first
	// decays it by 1/16.
	hourGap [24]uint16
}

// observe records an event at t (ns) in bucket b, whose hour of the day is hour;
// maxGap is the most one gap adds to the observed history.
func (a *activity) observe(t int64, b uint32, hour uint8, maxGap int64) {
	a.silent = false
	if a.buckets == 0 {
		a.firstT, a.lastT, a.lastB, a.lastHour, a.buckets = t, t, b, hour, 1
		return
	}
	if t > a.lastT {
		a.hist += min(t-a.lastT, maxGap)
		a.lastT = t
	}
	if b > a.lastB {
		g := b - a.lastB
		if a.buckets == 1 {
			a.gap = float32(g)
		} else {
			a.gap += 0.2 * (float32(g) - a.gap)
		}
		h := &a.hourGap[a.lastHour%24]
		*h = max(*h-*h/16, uint16(min(g, math.MaxUint16)))
		a.lastB, a.lastHour = b, hour
		if a.buckets < math.MaxUint16 {
			a.buckets++
		}
	}
}

// line returns how long (ns) the source may be silent before an alert, or -1 when it
// is not regular (yet).
func (e *Engine) silenceLine(a *activity) int64 {
	if a.buckets < regularBuckets || a.hist < int64(e.set.learning) ||
		time.Duration(float64(a.gap)*float64(e.set.interval)) > e.set.silenceAfter/2 {
		return -1
	}
	return max(int64(e.set.silenceAfter), 2*int64(a.hourGap[a.lastHour%24])*int64(e.set.interval))
}

type sensorState struct {
	name string
	act  activity
}

func (e *Engine) observeActivity(v *vendorState, ev *telemetry.Event, t int64) {
	b := e.bucketOf(t)
	hour := e.slotOfBucket(b).Hour
	gap := int64(e.set.maxGap)
	v.act.observe(t, b, hour, gap)
	if ev.Sensor == "" {
		return
	}
	for i := range e.sensors {
		if e.sensors[i].name == ev.Sensor {
			e.sensors[i].act.observe(t, b, hour, gap)
			return
		}
	}
	if len(e.sensors) >= maxSensors {
		e.c.sensorsUntracked++
		return
	}
	e.sensors = append(e.sensors, sensorState{name: ev.Sensor})
	e.sensors[len(e.sensors)-1].act.observe(t, b, hour, gap)
}

// checkSilence raises silence alerts for every regular source silent at now (ns).
func (e *Engine) checkSilence(now int64, emit func(Detection)) {
	for _, v := range e.vendors {
		if v.cfg.disabled.has(KindSilence) {
			continue
		}
		if line := e.silenceLine(&v.act); !v.act.silent && line >= 0 && now-v.act.lastT >= line {
			v.act.silent = true
			e.emit(emit, e.silenceDetection(v.name, "", &v.act, line))
		}
	}
	if e.set.disabled.has(KindSilence) || !e.sensorAlerts {
		return
	}
	for i := range e.sensors {
		s := &e.sensors[i]
		if line := e.silenceLine(&s.act); !s.act.silent && line >= 0 && now-s.act.lastT >= line {
			s.act.silent = true
			e.emit(emit, e.silenceDetection("", s.name, &s.act, line))
		}
	}
}

// silenceDetection describes a silent vendor (sensor == "") or a silent sensor (vendor
// == ""). A sensor's detection ID uses the bucket of its last event, so shards of a
// Sharded engine that all saw the sensor stop produce the same ID.
func (e *Engine) silenceDetection(vendor, sensor string, a *activity, line int64) Detection {
	key := Key{Vendor: vendor}
	at := a.lastT + line
	typical := float64(a.gap) * e.set.interval.Seconds()
	what, idStart := "vendor "+vendor, a.lastT
	if sensor != "" {
		what, idStart = "sensor "+sensor+" (for any vendor)", e.bucketStart(a.lastB)
	}
	return Detection{
		ID:               DetectionIDFor(KindSilence, key, sensor, utc(idStart)),
		Detector:         KindSilence,
		Key:              key,
		Severity:         SeverityMedium,
		Score:            0.5,
		Observed:         time.Duration(line).Seconds(),
		Expected:         Band{Low: 0, High: typical},
		Unit:             "seconds without telemetry",
		Window:           Window{Start: utc(a.lastT), End: utc(at)},
		FirstAnomalousAt: utc(a.lastT),
		DetectedAt:       utc(at),
		Sensor:           sensor,
		Reason: fmt.Sprintf("alert only, never grounds for revocation: no telemetry from %s for %s since %s (it usually sends every %s)",
			what, time.Duration(line), utc(a.lastT).Format(time.RFC3339), time.Duration(typical*float64(time.Second)).Round(time.Second)),
	}
}

// mergeActivity combines one shard's view of a sensor into the view of the whole
// engine. The shards see disjoint parts of the sensor's events, so the union's last
// event is the latest of the views and its gaps are at most the shortest of theirs.
func mergeActivity(into *activity, a activity, first bool) {
	if first {
		*into = a
		into.silent = false
		return
	}
	if a.buckets == 0 {
		return
	}
	if into.buckets == 0 || a.firstT < into.firstT {
		into.firstT = a.firstT
	}
	if a.lastT > into.lastT {
		into.lastT, into.lastB, into.lastHour = a.lastT, a.lastB, a.lastHour
	}
	if into.buckets == 0 || a.gap < into.gap {
		into.gap = a.gap
	}
	into.buckets = max(into.buckets, a.buckets)
	into.hist = max(into.hist, a.hist)
	for h := range into.hourGap {
		into.hourGap[h] = min(into.hourGap[h], a.hourGap[h])
	}
}
