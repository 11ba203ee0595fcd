package detectors

import (
	"fmt"
	"math"
	"time"
)

// The spike and sustained detectors share one volume model per key. An observation is
// the byte volume of one bucket (Interval wide, aligned to the epoch), on a log scale:
// x = log2(1 + bytes/u) with u = MinBytes/16, so that volumes well below MinBytes (the
// smallest volume a spike may be raised for) are all close to zero and sparse traffic
// (buckets alternating between nothing and a few hundred kilobytes) does not look like
// a series of huge jumps. The running sum of the current bucket is checked on every event
// against the bucket's triggers (the volumes at which the model's upward scores reach
// 0.5), so a detection fires on the event that crosses the line. A bucket is learned
// when the watermark passes its end; buckets without events are learned as zero.

func (e *Engine) volumeX(bytes int64) float64 {
	return math.Log2(1 + float64(max(bytes, 0))/e.unitBytes)
}

func (e *Engine) volumeBytes(x float64) float64 {
	if math.IsInf(x, 1) || x > 1000 {
		return math.Inf(1)
	}
	return (math.Exp2(x) - 1) * e.unitBytes
}

// volume counts bytes at event time t (ns) for key k and runs spike and sustained.
func (e *Engine) volume(v *vendorState, k *keyState, t, bytes int64, emit func(Detection)) {
	b := e.bucketOf(t)
	off := uint32(min(max(t-e.bucketStart(b), 0)/int64(time.Millisecond), math.MaxUint32-1))
	if !k.has(flagStarted) {
		k.flags |= flagStarted
		k.cur, k.curBytes, k.curFirst, k.anomAt, k.curTop = b, 0, math.MaxUint32, math.MaxUint32, 0
		e.triggers(v, k)
	} else {
		e.advance(v, k, b)
	}
	switch {
	case b >= k.cur: // b > cur cannot happen after advance
		k.curBytes += bytes
		k.curFirst = min(k.curFirst, off)
		k.curTop = max(k.curTop, float32(bytes))
		if k.anomAt == math.MaxUint32 && (float64(k.curBytes) > e.hourBytes[k.hourHi[e.slotOfBucket(k.cur).Hour]] || float32(bytes) >= k.eventTrig) {
			k.anomAt = off
		}
	case k.cur > 0 && b == k.cur-1 && (k.has(flagPrevOpen) || e.bucketEnd(b) > v.maxT-int64(e.set.lateness)):
		// out of order within the allowed lateness: counted in its own bucket
		k.flags |= flagPrevOpen
		k.prvBytes += float32(bytes)
		k.prvTop = max(k.prvTop, float32(bytes))
		e.checkBucket(v, k, b, int64(k.prvBytes), bytes, t, off, emit)
		return
	default: // late (the caller maps late events to the current time), or defensive
		k.curBytes += bytes
		k.curTop = max(k.curTop, float32(bytes))
		if k.anomAt == math.MaxUint32 && float64(k.curBytes) > e.hourBytes[k.hourHi[e.slotOfBucket(k.cur).Hour]] {
			k.anomAt = k.curFirst
		}
	}
	e.checkCurrent(v, k, bytes, t, emit)
}

// checkCurrent compares the current bucket's running sum, and the event of the given
// size just counted in it, with its triggers.
func (e *Engine) checkCurrent(v *vendorState, k *keyState, event, t int64, emit func(Detection)) {
	x := float64(k.curBytes)
	bucket := x >= float64(k.spikeTrig)
	if bucket && k.has(flagSpikeEarly) || (bucket || float32(event) >= k.eventTrig) && !k.has(flagSpike) {
		first := k.anomAt
		if first == math.MaxUint32 {
			first = k.curFirst
		}
		if bucket {
			event = 0 // the bucket's line, whatever the event
		}
		e.fireSpike(v, k, k.cur, k.curBytes, event, t, first, emit)
	}
	if x >= float64(k.sustTrig) && !k.has(flagSust) && int64(k.cusBytes)+k.curBytes >= e.set.minBytes {
		e.fireSustained(v, k, k.cur, k.curBytes, t, k.curFirst, emit)
	}
}

// checkBucket scores an open bucket other than the current one (the previous bucket,
// reached by an out-of-order event) directly against the model.
func (e *Engine) checkBucket(v *vendorState, k *keyState, b uint32, bytes, event, t int64, off uint32, emit func(Detection)) {
	p := &v.cfg.params
	slot := e.slotOfBucket(b)
	x := e.volumeX(bytes) - e.fleetLift(k, k.hourLine(v, slot.Hour)) // net of a fleet-wide rise
	sc := k.model.Score(p, x, slot)
	switch {
	case (!k.has(flagSpike) || k.has(flagSpikeEarly)) && e.spikeFires(v, k, sc, x, bytes, b):
		e.fireSpike(v, k, b, bytes, 0, t, off, emit)
	case !k.has(flagSpike) && e.eventFires(v, k, event, b):
		e.fireSpike(v, k, b, bytes, event, t, off, emit)
	}
	if !v.cfg.disabled.has(KindSustained) && !k.has(flagSust) && int64(k.cusBytes)+bytes >= e.set.minBytes &&
		(sc.SustainedUp >= 0.5 && x > k.seenLine(slot) || x >= e.envelopeTrigger(v, k, b)) {
		e.fireSustained(v, k, b, bytes, t, off, emit)
	}
}

// advance moves key k to bucket b: it learns every bucket the watermark has passed
// (feeding idle buckets as zero volume, at most a day's worth) and recomputes the
// triggers of the current bucket when the model changed.
func (e *Engine) advance(v *vendorState, k *keyState, b uint32) {
	wm := v.maxT - int64(e.set.lateness)
	changed := false
	if k.has(flagPrevOpen) && (e.bucketEnd(k.cur-1) <= wm || b > k.cur) {
		e.learn(v, k, k.cur-1, int64(k.prvBytes), int64(k.prvTop))
		k.flags &^= flagPrevOpen
		k.prvBytes, k.prvTop = 0, 0
		changed = true
	}
	if b > k.cur {
		if b == k.cur+1 && e.bucketEnd(k.cur) > wm {
			k.flags |= flagPrevOpen // cur stays open for late events
			k.prvBytes, k.prvTop = float32(k.curBytes), k.curTop
		} else {
			e.learn(v, k, k.cur, k.curBytes, int64(k.curTop))
		}
		if gap := int64(b) - int64(k.cur) - 1; gap > 0 {
			last := b - 1
			lastOpen := e.bucketEnd(last) > wm
			n := gap
			if lastOpen {
				n--
			}
			// learn the idle buckets cur+1 .. cur+n (only the last gapFill of them, and
			// none from before the vendor's last unobserved jump: a gap the vendor did
			// not observe is no history, see vendorState.skipAt)
			from := int64(k.cur) + 1
			if skip := n - int64(e.set.gapFill); skip > 0 {
				from += skip
			}
			if v.skipAt != 0 && e.bucketStart(k.cur) < v.skipAt {
				from = max(from, int64(e.bucketOf(v.skipAt-int64(e.set.maxGap))))
			}
			for i := from; i <= int64(k.cur)+n; i++ {
				e.learn(v, k, uint32(i), 0, 0)
			}
			if lastOpen {
				k.flags |= flagPrevOpen
				k.prvBytes, k.prvTop = 0, 0
			}
		}
		k.cur, k.curBytes, k.curFirst, k.anomAt, k.curTop = b, 0, math.MaxUint32, math.MaxUint32, 0
		changed = true
	}
	if changed {
		e.triggers(v, k)
	}
}

// learn closes bucket b of key k with the given volume and largest single event:
// episode bookkeeping, the model update, the CUSUM run tracking and the envelopes.
func (e *Engine) learn(v *vendorState, k *keyState, b uint32, bytes, top int64) {
	p := &v.cfg.params
	x := e.volumeX(bytes)
	slot := e.slotOfBucket(b)
	// During a fleet-wide rise the detectors judge the volume net of the common factor
	// (bounded, see fleetLift); the model and the envelopes learn the volume itself.
	disc := e.fleetLift(k, k.hourLine(v, slot.Hour))
	sc := k.model.Score(p, x-disc, slot)
	spiked := e.spikeFires(v, k, sc, x-disc, bytes, b) || e.eventFires(v, k, top, b)
	seen := x-disc <= k.seenLine(slot)
	if k.has(flagSpike) || k.has(flagSust) {
		ep := k.spikeEpisode()
		ep.observe(spiked, p.Quiet)
		k.setSpikeEpisode(ep)
		ep = k.sustEpisode()
		ep.observe(sc.SustainedUp >= 0.5 && !seen, p.Quiet)
		k.setSustEpisode(ep)
	}
	before := k.model.cusUp > 0 || k.envRun > 0
	k.model.update(p, x, slot, seen, disc)
	k.envRun = e.envelopeRun(v, k, x-disc, b)
	// The run of excess the sustained detector reports (its window and bytes) lasts
	// while either of its statistics is up.
	switch {
	case k.model.cusUp <= 0 && k.envRun <= 0:
		k.cusBytes = 0
	case !before || k.cusBytes == 0:
		// A run starts with the first bucket that moved bytes: buckets of no volume
		// (an idle key's seasonal residue) are not anomalous traffic.
		k.cusStart, k.cusBytes = b, float32(bytes)
		if bytes == 0 {
			k.cusStart = b + 1
		}
	default:
		k.cusBytes += float32(bytes)
	}
	// the hour envelope learns the volume, only half of the excess of a spike, and
	// nothing of a bucket that leaves the envelope run up (the run must not teach
	// the envelope the drift it watches; a spike is an incident of its own)
	q := uint8(min(math.Ceil(x*hourQ), math.MaxUint8))
	h := slot.Hour % 24
	switch {
	case e.fleet.dir > 0 && x > float64(k.hourHi[h])/hourQ+fleetNewAbove:
		k.flags |= flagFleetNew
	case k.has(flagFleetNew) && !e.fleetRecent(b):
		k.flags &^= flagFleetNew
	}
	if spiked || k.envRun <= 0 {
		k.hourHi[h] = envelope(k.hourHi[h], q, spiked)
	}
	k.eventHi[h] = envelope(k.eventHi[h], uint8(min(math.Ceil(e.volumeX(top)*hourQ), math.MaxUint8)), spiked)
	// the sustained detector's guard learns the same, unless the bucket extends a
	// run of excess (the CUSUM is up): it must not learn the drift it watches
	if seen || k.model.cusUp <= 0 {
		k.seenHi[h] = max(k.seenHi[h], min(q, k.hourHi[h]))
	}
	if k.model.n%uint32(e.set.decayEvery) == 0 {
		for h := range k.hourHi {
			if k.hourHi[h] > 0 {
				k.hourHi[h]--
			}
			if k.seenHi[h] > 0 {
				k.seenHi[h]--
			}
			if k.eventHi[h] > 0 {
				k.eventHi[h]--
			}
		}
	}
}

// envelope returns an hour envelope's value hi after a bucket at q (quantized as hi)
// was learned: the new high, or only half of the excess of a spike.
func envelope(hi, q uint8, spiked bool) uint8 {
	switch {
	case q <= hi:
		return hi
	case spiked:
		return hi + (q-hi+1)/2
	default:
		return q
	}
}

// hourQ is the resolution of the hour envelopes: eighths of the log2 volume scale.
const hourQ = 8

// hourLine is the volume (model scale) the hour envelope lets through: the most seen at
// this hour times 2^hourMargin (2× by default).
func (k *keyState) hourLine(v *vendorState, h uint8) float64 {
	return float64(k.hourHi[h%24])/hourQ + v.cfg.hourMargin
}

// seenLine is the sustained detector's guard for a bucket in slot s (model scale): the
// most the key has sent at this hour of the day outside runs of excess, on a
// comparable day — on a weekend
// lowered by the model's learned weekend offset once a weekend has been seen. A bucket
// at or below it is a return to a level the key has already sent, not excess: it adds
// nothing to the CUSUM and cannot fire a sustained detection (the Monday after a quiet
// weekend, the day after a holiday, the end of an outage).
func (k *keyState) seenLine(s Slot) float64 {
	line := float64(k.seenHi[s.Hour%24]) / hourQ
	if s.isWeekend() {
		if off, ok := k.model.WeekendOffset(); ok && off < 0 {
			line += off
		}
	}
	return line
}

// The envelope run is the sustained detector's second statistic. The volume model's
// CUSUM judges a bucket against the key's learned baseline, which (with its scale)
// follows a rise that lasts hours: in the busiest hours of the day, a steady rise to
// twice the peak ebbs out of the CUSUM before it crosses its line, and never reaches
// the spike's hour line (twice the most seen at this hour). The envelope run judges
// each closed bucket against the most the key has sent around its hour of the day
// (the hour envelope at the hour or the one before or after it, on any day): a CUSUM
// of the excess in log2 units, envSlack allowed and at most envCap counted per bucket
// (above twice the most seen is the spike's range), firing at envLine. At the default
// sensitivity (the three scale with it, as the hour margin does) a steady 1.9× the
// most seen fires in its third bucket, 1.5× in its fifth, 1.11× never. Growth is
// learned: the hour envelope learns every bucket that leaves no run open, so a key
// that grows by less than envSlack per bucket moves its envelope with it.
const (
	envSlack = 0.15 // log2: 1.11×
	envCap   = 1.0  // log2: 2×
	envLine  = 2.0
	// envAfter is how much history the envelope run needs: every hour of the day
	// seen on two days (and on a day of the same type, see envelopeTop).
	envAfter = 48 * time.Hour
)

// envelopeTop returns the envelope bucket b of key k is judged against by the
// envelope run (model scale), and false when the run is off: the sustained detector
// disabled; less than envAfter of history; the hour never seen on an earlier day of
// the same type (a weekday for a weekday: the first Monday of a key first seen on a
// Friday afternoon knows its Monday-morning hours only from the quiet weekend);
// nothing ever sent around this hour; during a fleet-wide rise, and for a day after
// it on a key the rise took to a new level (as for the spike's far line: the hours
// not yet seen at the new level would all be above their envelope at once).
func (e *Engine) envelopeTop(v *vendorState, k *keyState, b uint32) (float64, bool) {
	slot := e.slotOfBucket(b)
	if v.cfg.disabled.has(KindSustained) || k.model.N() < v.cfg.params.Warmup ||
		time.Duration(k.model.N())*e.set.interval < envAfter || !k.model.seenComparableDay(slot) ||
		e.fleet.dir > 0 || k.has(flagFleetNew) && e.fleetRecent(b) {
		return 0, false
	}
	h := slot.Hour % 24
	top := max(k.hourHi[(h+23)%24], k.hourHi[h], k.hourHi[(h+1)%24])
	if top == 0 {
		return 0, false
	}
	return float64(top) / hourQ, true
}

// envelopeRun returns key k's envelope run after bucket b closed at volume x (model
// scale, net of a fleet-wide rise). A run that reaches its line restarts: the bucket
// fired the sustained detector on its way (see Engine.triggers), and the guard
// envelope may learn again.
func (e *Engine) envelopeRun(v *vendorState, k *keyState, x float64, b uint32) float32 {
	top, ok := e.envelopeTop(v, k, b)
	if !ok {
		return 0
	}
	m := v.cfg.hourMargin
	r := math.Max(0, float64(k.envRun)+math.Min(x-top, envCap*m)-envSlack*m)
	if r >= envLine*m {
		return 0
	}
	return float32(r)
}

// envelopeTrigger returns the volume (model scale) at or above which bucket b of key
// k brings its envelope run to the line, +Inf when none can.
func (e *Engine) envelopeTrigger(v *vendorState, k *keyState, b uint32) float64 {
	top, ok := e.envelopeTop(v, k, b)
	m := v.cfg.hourMargin
	need := envLine*m - float64(k.envRun) + envSlack*m
	if !ok || need > envCap*m {
		return math.Inf(1)
	}
	return top + need
}

// spikeFires says whether a bucket b of the given volume fires the spike detector. The
// volume must be at least MinBytes and above the hour line (twice the most the key has
// sent at this hour of the day), and either the volume model's upward score reaches
// 0.5 or the volume is at or above the far line (see farLine): the model alone has
// learned every jump it has seen, at any hour (a nightly batch), and the hour envelope
// alone knows nothing of level shifts, drift or volatility.
func (e *Engine) spikeFires(v *vendorState, k *keyState, sc Score, x float64, bytes int64, b uint32) bool {
	if v.cfg.disabled.has(KindSpike) || bytes < e.set.minBytes || k.model.N() < v.cfg.params.Warmup {
		return false
	}
	s := e.slotOfBucket(b)
	return x >= k.hourLine(v, s.Hour) && (sc.SpikeUp >= 0.5 || x >= e.farLine(v, k, b))
}

// farHigh is how far above the most a key has sent around this time of day a bucket
// fires the spike detector whatever its volume model says (log2 units at the default
// sensitivity: log2(3), 3×).
const farHigh = 1.584962500721156

// farLine is the volume (model scale) at or above which bucket b of key k fires the
// spike detector whatever the volume model says: 3× the most the key has sent in this
// hour of the day or the one before or after it (a nightly batch that starts a few
// minutes early or late is not new), on a weekend net of the model's weekend offset
// when it is in use; never below the hour line (2× the most seen at this hour), and
// never above the hour line times 4 (8× the most seen at this hour: the bound before,
// so no telemetry can make the line higher than it was). A smash-and-grab at 40× the usual rate crosses 3× within seconds, where
// a young model's line may sit up to the 8× bound (a minute or more).
//
// While a fleet-wide rise is on, and for a day after it ended on a key the rise took
// well above the most it had sent at that hour (flagFleetNew), the far line is at the
// 8× bound: the hours of the day such a key has not yet been seen at at its new level
// would otherwise all cross 3× at once. A return to a level already seen (the Monday
// after a weekend, the day after a holiday) does not mark a key. A forged fleet rise
// buys nothing the 8× bound did not already allow.
func (e *Engine) farLine(v *vendorState, k *keyState, b uint32) float64 {
	h := e.slotOfBucket(b).Hour % 24
	bound := k.hourLine(v, h) + 2*v.cfg.hourMargin
	if e.fleet.dir > 0 || k.has(flagFleetNew) && e.fleetRecent(b) {
		return bound
	}
	top := float64(max(k.hourHi[(h+23)%24], k.hourHi[h], k.hourHi[(h+1)%24])) / hourQ
	if s := e.slotOfBucket(b); s.isWeekend() {
		if off, ok := k.model.WeekendOffset(); ok && off < 0 {
			top += off
		}
	}
	return math.Max(math.Min(top+farHigh*v.cfg.hourMargin, bound), k.hourLine(v, h))
}

// eventLine is the size (model scale) at or above which one event in bucket b of key k
// fires the spike detector on its own, whatever the bucket's volume so far: 3× the
// largest single event the key has sent in this hour of the day or the one before or
// after it (eventHi, learned as the hour envelope is: a spike's excess only by half).
// A smash-and-grab moves megabytes per event where the key's own events are a fraction
// of that, so its first event can fire, where the bucket's running sum needs several
// to cross the far line; a nightly batch of large events is learned at its hour like
// any other. +Inf while the volume model warms up, when the spike detector is disabled,
// and whenever the far line is at its 8× bound (a fleet-wide rise, see farLine): a
// rise makes every event larger at once, and the bucket lines alone then apply, as
// they did before this rule, so no telemetry can raise a line above where it was.
// The caller also requires the event to be at least MinBytes.
func (e *Engine) eventLine(v *vendorState, k *keyState, b uint32) float64 {
	if v.cfg.disabled.has(KindSpike) || k.model.N() < v.cfg.params.Warmup ||
		e.fleet.dir > 0 || k.has(flagFleetNew) && e.fleetRecent(b) {
		return math.Inf(1)
	}
	return k.eventTop(e.slotOfBucket(b).Hour) + farHigh*v.cfg.hourMargin
}

// eventTop is the largest single event (model scale) key k has sent in hour h of the
// day or the one before or after it.
func (k *keyState) eventTop(h uint8) float64 {
	h %= 24
	return float64(max(k.eventHi[(h+23)%24], k.eventHi[h], k.eventHi[(h+1)%24])) / hourQ
}

// eventFires says whether one event of the given size in bucket b fires the spike
// detector on its own (see eventLine).
func (e *Engine) eventFires(v *vendorState, k *keyState, event int64, b uint32) bool {
	return event >= e.set.minBytes && e.volumeX(event) >= e.eventLine(v, k, b)
}

// fleetNewAbove is how far above the most a key has sent at an hour (log2: 1.41×) a
// bucket learned during a fleet-wide rise must be to mark the key (flagFleetNew).
const fleetNewAbove = 0.5

// fleetRecent says whether a fleet-wide rise is on at bucket b, or ended less than a
// day before it.
func (e *Engine) fleetRecent(b uint32) bool {
	f := &e.fleet
	if f.dir > 0 {
		return true
	}
	return f.last > 0 && int64(b) < int64(f.ended)+int64(24*time.Hour/e.set.interval)
}

// triggers computes the current bucket's spike and sustained lines in bytes.
func (e *Engine) triggers(v *vendorState, k *keyState) {
	inf := float32(math.Inf(1))
	k.spikeTrig, k.sustTrig, k.eventTrig = inf, inf, inf
	p := &v.cfg.params
	slot := e.slotOfBucket(k.cur)
	if ev := e.eventLine(v, k, k.cur); !math.IsInf(ev, 1) {
		k.eventTrig = math.Nextafter32(float32(math.Max(e.volumeBytes(ev), float64(e.set.minBytes))), inf)
	}
	spike, sust := k.model.Triggers(p, slot)
	if !v.cfg.disabled.has(KindSpike) && !math.IsInf(spike, 1) { // +Inf while learning
		line := k.hourLine(v, slot.Hour)
		spike = math.Min(math.Max(spike, line), e.farLine(v, k, k.cur))
		spike += e.fleetLift(k, spike)
		k.spikeTrig = float32(math.Max(e.volumeBytes(spike), float64(e.set.minBytes)))
	}
	if !v.cfg.disabled.has(KindSustained) {
		sust = math.Min(math.Max(sust, k.seenLine(slot)), e.envelopeTrigger(v, k, k.cur))
		if !math.IsInf(sust, 1) {
			sust += e.fleetLift(k, sust)
		}
		k.sustTrig = float32(math.Max(e.volumeBytes(sust), 1))
	}
	// float32 rounding must never move a line below the model's own 0.5 point
	if k.spikeTrig != inf {
		k.spikeTrig = math.Nextafter32(k.spikeTrig, inf)
	}
	if k.sustTrig != inf {
		k.sustTrig = math.Nextafter32(k.sustTrig, inf)
	}
}

// fireSpike raises a spike on bucket b at the given volume; event is the size of the
// single event that fired it on its own (see eventLine), 0 when the volume crossed the
// bucket's line. A spike raised on one event has seen little of its bucket: when its
// severity is below the key's top severity (critical on a mature credential: the one
// the shipped playbooks revoke on), the episode stays open to one more spike, raised
// when a bucket crosses its own line at the top severity (flagSpikeEarly).
func (e *Engine) fireSpike(v *vendorState, k *keyState, b uint32, bytes, event, t int64, off uint32, emit func(Detection)) {
	escalate := k.has(flagSpike) && k.has(flagSpikeEarly)
	ep := k.spikeEpisode()
	if escalate && event > 0 || !escalate && !ep.start() {
		return
	}
	p := &v.cfg.params
	slot := e.slotOfBucket(b)
	sc := k.model.Score(p, e.volumeX(bytes), slot)
	spikeX, _ := k.model.Triggers(p, slot)
	line := k.hourLine(v, slot.Hour)
	seen := line - v.cfg.hourMargin
	high := math.Max(e.volumeBytes(math.Min(math.Max(spikeX, line), e.farLine(v, k, b))), float64(e.set.minBytes))
	typical := math.Max(e.volumeBytes(sc.Expected), 0)
	key := e.key(v, k)
	start := e.bucketStart(b)
	first := t
	if off != math.MaxUint32 {
		first = min(t, start+int64(off)*int64(time.Millisecond))
	}
	mag := float64(bytes) / math.Max(typical, 1)
	if event > 0 {
		// as far above the largest event seen around this hour as the bucket is above
		// its typical volume: a bucket fired on its first events has no size yet
		mag = math.Max(mag, float64(event)/math.Max(e.volumeBytes(k.eventTop(slot.Hour)), 1))
	}
	sev, top := severity(KindSpike, key.Credential != "", mag), severity(KindSpike, key.Credential != "", math.Inf(1))
	if time.Duration(k.model.N())*e.set.interval < MatureAfter {
		// A young baseline has seen each daily habit only once or twice: not enough to
		// call anything critical (the shipped playbooks revoke on critical).
		sev, top = youngSeverity(sev), youngSeverity(top)
	}
	switch {
	case escalate && sev.Rank() < top.Rank():
		return
	case escalate:
		k.flags &^= flagSpikeEarly
	default:
		k.setSpikeEpisode(ep)
		k.set(flagSpikeEarly, event > 0 && sev.Rank() < top.Rank())
	}
	id := DetectionID(KindSpike, key, utc(start))
	if event > 0 {
		id = DetectionIDFor(KindSpike, key, "event", utc(start))
	}
	reason := fmt.Sprintf("%s sent %s in the %s bucket starting %s: above the line of %s (typical %s, at most %s seen at this hour; %s feature)",
		key, formatBytes(float64(bytes)), shortDuration(e.set.interval), utc(start).Format(time.RFC3339),
		formatBytes(high), formatBytes(typical), formatBytes(e.volumeBytes(seen)), sc.UpFeature)
	if event > 0 {
		reason = fmt.Sprintf("%s sent %s in one event at %s: above the line of %s for one event (at most %s seen in one event around this hour); %s in the %s bucket starting %s (typical %s)",
			key, formatBytes(float64(event)), utc(t).Format(time.RFC3339), formatBytes(math.Max(e.volumeBytes(e.eventLine(v, k, b)), float64(e.set.minBytes))),
			formatBytes(e.volumeBytes(k.eventTop(slot.Hour))), formatBytes(float64(bytes)), shortDuration(e.set.interval), utc(start).Format(time.RFC3339), formatBytes(typical))
	}
	e.emit(emit, Detection{
		ID:               id,
		Detector:         KindSpike,
		Key:              key,
		Severity:         sev,
		Score:            math.Max(sc.SpikeUp, 0.5),
		Observed:         float64(bytes),
		Expected:         Band{Low: typical, High: high},
		Unit:             e.unit,
		Window:           Window{Start: utc(start), End: utc(e.bucketEnd(b))},
		FirstAnomalousAt: utc(first),
		DetectedAt:       utc(t),
		AnomalousBytes:   bytes,
		Reason:           reason,
	})
}

// youngSeverity is severity s on a key whose baseline is younger than MatureAfter.
func youngSeverity(s Severity) Severity {
	if s == SeverityCritical {
		return SeverityHigh
	}
	return s
}

func (e *Engine) fireSustained(v *vendorState, k *keyState, b uint32, bytes, t int64, off uint32, emit func(Detection)) {
	ep := k.sustEpisode()
	if !ep.start() {
		return
	}
	k.setSustEpisode(ep)
	p := &v.cfg.params
	slot := e.slotOfBucket(b)
	sc := k.model.Score(p, e.volumeX(bytes), slot)
	_, sustX := k.model.Triggers(p, slot)
	envX := e.envelopeTrigger(v, k, b)
	byEnvelope := e.volumeX(bytes) >= envX
	if byEnvelope {
		sustX = envX
	}
	startB := b
	total := bytes
	if (k.model.cusUp > 0 || k.envRun > 0) && k.cusStart < b {
		startB = k.cusStart
		total += int64(k.cusBytes)
	}
	key := e.key(v, k)
	start := e.bucketStart(startB)
	first := start
	if startB == b && off != math.MaxUint32 {
		first = min(t, start+int64(off)*int64(time.Millisecond))
	}
	typical := math.Max(e.volumeBytes(sc.Expected), 0)
	reason := fmt.Sprintf("%s has sent more than its learned baseline (typical %s per %s) for %s in a row; %s in total since %s",
		key, formatBytes(typical), shortDuration(e.set.interval),
		time.Duration(e.bucketEnd(b)-start).String(), formatBytes(float64(total)), utc(start).Format(time.RFC3339))
	if byEnvelope {
		top, _ := e.envelopeTop(v, k, b)
		reason = fmt.Sprintf("%s has sent more than the most it had sent around this hour of the day (at most %s per %s) for %s in a row; %s in total since %s",
			key, formatBytes(e.volumeBytes(top)), shortDuration(e.set.interval),
			time.Duration(e.bucketEnd(b)-start).String(), formatBytes(float64(total)), utc(start).Format(time.RFC3339))
	}
	e.emit(emit, Detection{
		ID:               DetectionID(KindSustained, key, utc(start)),
		Detector:         KindSustained,
		Key:              key,
		Severity:         severity(KindSustained, key.Credential != "", 0),
		Score:            math.Max(sc.SustainedUp, 0.5),
		Observed:         float64(bytes),
		Expected:         Band{Low: typical, High: e.volumeBytes(sustX)},
		Unit:             e.unit,
		Window:           Window{Start: utc(start), End: utc(e.bucketEnd(b))},
		FirstAnomalousAt: utc(first),
		DetectedAt:       utc(t),
		AnomalousBytes:   total,
		Reason:           reason,
	})
}

// MatureAfter is how much history a key's volume model needs before a spike on it may
// be critical.
const MatureAfter = 72 * time.Hour

// shortDuration renders 5m0s as 5m and 1h0m0s as 1h.
func shortDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return d.String()
	}
}
