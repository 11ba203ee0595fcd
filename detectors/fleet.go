package detectors

import (
	"math"
	"slices"
	"time"
)

// Fleet-wide shifts.
//
// When most vendors move together in the same interval, that is the environment (a
// Monday, an outage ending, a network change), not one exfiltration per vendor. On every
// tick the engine measures each vendor with a mature baseline (MatureAfter of learned
// buckets on its vendor key) whose current bucket is under way: its move is the log2
// ratio of the bucket's volume so far, extrapolated to the whole bucket, to what its
// model expects for that bucket. When at least FleetQuorum of them (and at least
// FleetMinVendors) moved the same way by FleetMinMove or more, and so did the median
// vendor, a fleet shift is on: one observation is recorded (FleetShift), and while it
// lasts the spike and sustained detectors of every key judge its volume net of the
// common factor — the median vendor's move, never more than it, and never so far that
// a key's lines rise above FleetHeadroom times the most that key has ever sent in one
// bucket (its hour envelope at any hour). The shift ends when fewer than half the
// quorum still move with it. Caps, new destinations, dormant and expected-idle
// credentials are never discounted.
//
// The measure is taken at Tick, from the state the events before it left, so the same
// recording ticked at the same times gives the same shifts whether one Engine or a
// Sharded engine with any number of shards runs it: a Sharded engine gathers the moves
// of every shard, decides once, and hands the decision to every shard. Nothing of it
// runs on the per-event path; keys' lines are recomputed only when the discount changes.

const (
	// FleetMinVendors is the fewest mature, active vendors a fleet shift is judged on.
	FleetMinVendors = 5
	// FleetQuorum is the share of the measured vendors that must move the same way.
	FleetQuorum = 2.0 / 3
	// FleetMinMove is how far (log2 of the volume ratio: 0.58 is ×1.5) a vendor must
	// move from what its model expects to count as moved.
	FleetMinMove = 0.58
	// FleetHeadroom bounds the discount: a fleet shift never raises a key's spike or
	// sustained line above this many times the most the key has ever sent in one
	// bucket (log2: 2 is 4×).
	FleetHeadroom = 2.0
	// fleetMinFrac is the least part of its current bucket a vendor must have been
	// observed for before its move is measured from it.
	fleetMinFrac = 0.2
	// fleetStep is the resolution of the published discount (log2 units): a smaller
	// change of the median move is not published (keys' lines are recomputed only when
	// the discount changes).
	fleetStep = 1.0 / 8
	// maxFleetLog bounds the observations kept for reports.
	maxFleetLog = 256
)

// FleetShift is one observation of a fleet-wide shift: most vendors moved together.
type FleetShift struct {
	// At is the start of the bucket in which the shift was first seen.
	At time.Time `json:"at"`
	// Until is the time of the tick that saw it end (zero while it lasts).
	Until time.Time `json:"until,omitzero"`
	// VendorsMoved is the number of vendors that moved with the shift when it was first
	// seen, of VendorsTotal mature vendors measured.
	VendorsMoved int `json:"vendors_moved"`
	VendorsTotal int `json:"vendors_total"`
	// Factor is the median vendor's volume ratio to its expected volume: the common
	// factor (above 1 for a rise, below 1 for a dip), the largest (or smallest) seen
	// while the shift lasted.
	Factor float64 `json:"factor"`
	// Discounted says whether the volume detectors discounted the shift (rises only).
	Discounted bool `json:"discounted"`
}

// FleetStatus is the fleet-wide shift state of an engine.
type FleetStatus struct {
	// On is whether a fleet shift is on now; Current describes it.
	On      bool
	Current FleetShift
	// Discount is the factor the spike and sustained detectors discount now (1: none).
	Discount float64
	// Shifts counts the fleet shifts observed (since the engine's state began,
	// carried by snapshots).
	Shifts uint64
}

// fleetState is the decided fleet-wide state. Every engine holds a copy (it is in the
// snapshot); the owner of the decision (a standalone Engine, or the Sharded engine)
// changes it at Tick.
type fleetState struct {
	dir    int8    // +1 a rise, -1 a dip, 0 none
	move   float32 // the median move (log2) as last published
	ext    float32 // the extreme median move of the shift
	since  uint32  // the bucket in which it began
	last   int8    // the direction of the last shift that ended
	ended  uint32  // the bucket in which it ended
	moved  uint16
	total  uint16
	shifts uint64 // observations so far
}

// discount is what the volume detectors subtract (log2 units): the median move of a
// rise, 0 otherwise.
func (f *fleetState) discount() float64 {
	if f.dir > 0 && f.move > 0 {
		return float64(f.move)
	}
	return 0
}

// fleetDecider turns the measured moves into the fleet state and the observations; a
// standalone Engine and a Sharded engine each own one.
type fleetDecider struct {
	state fleetState
	log   []FleetShift
	moves []float64 // scratch
}

// decide updates the state from the moves measured at a tick at now (ns) in bucket b:
// pairs of a vendor's move and its noise (see Engine.fleetMoves). It reports whether
// the state the engines hold changed.
//
// A shift begins when at least FleetQuorum of the vendors moved the same way by at least
// FleetMinMove and beyond their own noise, and the median move is at least FleetMinMove;
// it lasts until the median move falls below half of that (a bucket observed in part
// is noisy: too few vendors clearly moved is not the end of a shift). A shift that
// begins again the same way within fleetMerge of its end is the same observation.
func (d *fleetDecider) decide(moves []float64, now int64, b uint32, bucketStart int64) bool {
	n := len(moves) / 2
	if n < FleetMinVendors {
		return false // too few to judge: nothing changes
	}
	d.moves = d.moves[:0]
	up, down := 0, 0
	for i := 0; i+1 < len(moves); i += 2 {
		m, noise := moves[i], moves[i+1]
		d.moves = append(d.moves, m)
		lim := math.Max(FleetMinMove, noise)
		if m >= lim {
			up++
		} else if m <= -lim {
			down++
		}
	}
	slices.Sort(d.moves)
	med := d.moves[n/2]
	if n%2 == 0 {
		med = (d.moves[n/2-1] + d.moves[n/2]) / 2
	}
	quorum := int(math.Ceil(FleetQuorum * float64(n)))
	prev := d.state
	s := &d.state
	if s.dir != 0 {
		if float64(s.dir)*med < FleetMinMove/2 {
			// over: the median vendor is back near what it was expected to send
			if i := len(d.log) - 1; i >= 0 && d.log[i].Until.IsZero() {
				d.log[i].Until = utc(now)
			}
			s.last, s.ended = s.dir, b
			s.dir, s.move, s.ext = 0, 0, 0
			return true
		}
		q := quantizeMove(med)
		if math.Abs(q-float64(s.move)) >= fleetStep {
			s.move = float32(q)
		}
		if math.Abs(med) > math.Abs(float64(s.ext)) {
			s.ext = float32(med)
			if i := len(d.log) - 1; i >= 0 && d.log[i].Until.IsZero() {
				d.log[i].Factor = factorOf(med)
			}
		}
		return *s != prev
	}
	var dir int8
	switch {
	case up >= quorum && med >= FleetMinMove:
		dir = 1
	case down >= quorum && med <= -FleetMinMove:
		dir, up = -1, down
	default:
		return false
	}
	if i := len(d.log) - 1; s.last == dir && b-s.ended <= fleetMerge && i >= 0 && !d.log[i].Until.IsZero() {
		// the same shift again after a short lull: one observation
		d.log[i].Until = time.Time{}
		s.dir, s.move = dir, float32(quantizeMove(med))
		if math.Abs(med) > math.Abs(float64(s.ext)) {
			s.ext = float32(med)
			d.log[i].Factor = factorOf(med)
		}
		return true
	}
	*s = fleetState{dir: dir, move: float32(quantizeMove(med)), ext: float32(med), since: b,
		moved: uint16(min(up, math.MaxUint16)), total: uint16(min(n, math.MaxUint16)), shifts: s.shifts + 1}
	d.record(FleetShift{At: utc(bucketStart), VendorsMoved: up, VendorsTotal: n, Factor: factorOf(med), Discounted: dir > 0})
	return true
}

// fleetMerge is how many buckets after a shift ended the same shift may begin again and
// still be the same observation.
const fleetMerge = 12

func (d *fleetDecider) record(o FleetShift) {
	if len(d.log) >= maxFleetLog {
		d.log = slices.Delete(d.log, 0, len(d.log)-maxFleetLog+1)
	}
	d.log = append(d.log, o)
}

// restored takes over a state read from a snapshot: a shift on is listed again.
func (d *fleetDecider) restored(s fleetState, bucketStart int64) {
	d.state = s
	d.log = nil
	if s.dir != 0 {
		d.record(FleetShift{At: utc(bucketStart), VendorsMoved: int(s.moved), VendorsTotal: int(s.total),
			Factor: factorOf(float64(s.ext)), Discounted: s.dir > 0})
	}
}

func (d *fleetDecider) status() FleetStatus {
	st := FleetStatus{On: d.state.dir != 0, Discount: factorOf(d.state.discount()), Shifts: d.state.shifts}
	if st.On && len(d.log) > 0 {
		st.Current = d.log[len(d.log)-1]
	}
	return st
}

func quantizeMove(m float64) float64 { return math.Round(m/fleetStep) * fleetStep }

func factorOf(m float64) float64 { return math.Round(math.Exp2(m)*1000) / 1000 }

// fleetMoves appends the move of every vendor of the engine with a mature baseline whose
// current bucket has been under way, at now (ns), for at least fleetMinFrac of it.
func (e *Engine) fleetMoves(now int64, out []float64) []float64 {
	mature := int(MatureAfter / e.set.interval)
	cur := e.bucketOf(now - 1)
	frac := float64(now-e.bucketStart(cur)) / float64(e.set.interval)
	if frac < fleetMinFrac {
		return out
	}
	for _, v := range e.vendors {
		k := e.keys.at(v.key)
		if !k.has(flagStarted) || k.cur != cur || k.model.N() < mature {
			continue
		}
		slot := e.slotOfBucket(cur)
		expected := k.model.Score(&v.cfg.params, 0, slot).Expected
		move := e.volumeX(int64(float64(k.curBytes)/frac)) - expected
		// A vendor moved when its move leaves its own noise too (its robust scale,
		// wider for a bucket observed in part).
		noise := fleetNoise * float64(k.model.smad) / math.Sqrt(frac)
		out = append(out, move, noise)
	}
	return out
}

// fleetNoise is how many robust scales of its own a vendor's move must exceed to count
// (the scale grows as 1/√(part of the bucket observed)).
const fleetNoise = 2.0

// applyFleet makes s the engine's fleet state; when the discount changed, every key's
// lines are recomputed.
func (e *Engine) applyFleet(s fleetState) {
	old := e.fleet.discount()
	e.fleet = s
	if e.fleet.discount() == old {
		return
	}
	for i := 0; i < e.keys.len(); i++ {
		k := e.keys.at(uint32(i))
		if k.has(flagStarted) {
			e.triggers(e.vendors[k.vendor], k)
		}
	}
}

// fleetTick measures and decides the fleet state of a standalone engine at now (ns).
func (e *Engine) fleetTick(now int64) {
	e.fleetScratch = e.fleetMoves(now, e.fleetScratch[:0])
	b := e.bucketOf(now - 1)
	if e.fleetOwn.decide(e.fleetScratch, now, b, e.bucketStart(b)) {
		e.applyFleet(e.fleetOwn.state)
	}
}

// FleetShifts returns the fleet-wide shifts observed (the latest 256), oldest first.
// Call it from the goroutine that owns the engine.
func (e *Engine) FleetShifts() []FleetShift { return slices.Clone(e.fleetOwn.log) }

// Fleet returns the engine's fleet-wide shift state. Call it from the goroutine that
// owns the engine.
func (e *Engine) Fleet() FleetStatus { return e.fleetOwn.status() }

// fleetLift is the discount (log2 units) the volume detectors of key k apply to a line
// at line (model scale): the fleet's discount, bounded so that the lifted line stays
// below FleetHeadroom times the most the key has ever sent in one bucket (a line
// already above that is not lifted). 0 when no rise is on.
func (e *Engine) fleetLift(k *keyState, line float64) float64 {
	d := e.fleet.discount()
	if d <= 0 {
		return 0
	}
	top := uint8(0)
	for _, q := range k.hourHi {
		top = max(top, q)
	}
	return math.Max(0, math.Min(d, float64(top)/hourQ+FleetHeadroom-line))
}

// encodeFleet writes the fleet state (snapshot version 4).
func encodeFleet(enc *encoder, s *fleetState) {
	enc.u8(uint8(s.dir))
	enc.f32(s.move)
	enc.f32(s.ext)
	enc.u32(s.since)
	enc.u8(uint8(s.last))
	enc.u32(s.ended)
	enc.u16(s.moved)
	enc.u16(s.total)
	enc.u64(s.shifts)
}

// decodeFleet reads the fleet state; a snapshot before version 4 had none.
func decodeFleet(d *decoder) fleetState {
	var s fleetState
	if d.version < 4 {
		return s
	}
	s.dir = int8(d.u8())
	s.move, s.ext = d.f32(), d.f32()
	s.since = d.u32()
	s.last, s.ended = int8(d.u8()), d.u32()
	s.moved, s.total = d.u16(), d.u16()
	s.shifts = d.u64()
	if d.err == nil && (s.dir < -1 || s.dir > 1 || s.last < -1 || s.last > 1 || math.Abs(float64(s.move)) > 64 || math.Abs(float64(s.ext)) > 64) {
		d.fail("fleet state out of range")
	}
	return s
}
