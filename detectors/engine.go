package detectors

import (
	"fmt"
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// DefaultMaxKeys bounds the number of keys one Engine tracks unless WithMaxKeys says
// otherwise.
const DefaultMaxKeys = 1 << 24

// maxSensors is the number of sensors one Engine tracks for sensor silence.
const maxSensors = 64

// Option configures an Engine or a Sharded engine.
type Option func(*options)

type options struct {
	clock    clock.Clock
	maxKeys  int
	params   ModelParams
	buffer   int
	inline   bool
	observer Observer
	// revocations feeds the use_after_revocation detector; nil turns it off.
	revocations Revocations
	// shardSensors: sensor silence is evaluated by the Sharded engine over all
	// shards, not by each shard.
	shardSensors bool
}

func defaultOptions() options {
	return options{clock: clock.Real{}, maxKeys: DefaultMaxKeys, params: DefaultModelParams(), buffer: 256}
}

// WithClock sets the clock Sharded.Tick reads (default: the wall clock). An Engine's
// Tick is given the time explicitly.
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// WithMaxKeys bounds the number of keys (vendor and credential keys) one Engine (one
// shard) tracks, and so the number of vendors. Events for a credential beyond the
// bound still count for the vendor key; both are counted in Counters.KeysRefused.
func WithMaxKeys(n int) Option { return func(o *options) { o.maxKeys = max(1, n) } }

// WithModelParams replaces the volume model parameters (Warmup is always derived from
// the learning period).
func WithModelParams(p ModelParams) Option { return func(o *options) { o.params = p } }

// WithQueue sets the per-shard queue length of a Sharded engine (default 256 messages).
func WithQueue(n int) Option { return func(o *options) { o.buffer = max(1, n) } }

// WithInline makes a Sharded engine process on the goroutine that submits, one message
// at a time and in order, with no shard goroutines: SubmitBatch has handed every
// detection to the sink and called its callback when it returns. Replay runs inline,
// so that the same recording always gives the same detections in the same order.
func WithInline() Option { return func(o *options) { o.inline = true } }

// An Observer sees every event right after an engine processed it (and after the
// event's detections were handed on), on the goroutine that owns the engine, so it may
// call the engine's read methods (Band, Watermark). It must not keep e. Replay draws its
// charts with one.
type Observer func(e *Engine, ev *telemetry.Event)

// WithObserver sets an Observer on a Sharded engine's shards.
func WithObserver(o Observer) Option { return func(o2 *options) { o2.observer = o } }

// Engine is one shard of the event-time detection engine. It keeps per-key state for
// every (vendor, credential) and every vendor, and runs the seven detector kinds on
// every event. It is not safe for concurrent use: one goroutine owns it (Sharded runs
// one Engine per goroutine).
type Engine struct {
	set settings
	// sensorAlerts: this engine raises sensor-silence alerts itself (false for the
	// shards of a Sharded engine, which evaluates sensors across shards).
	sensorAlerts bool
	unit         string // Unit of volume detections, e.g. "bytes/5m"
	// unitBytes is the volume scale u of the volume models (x = log2(1 + bytes/u)).
	unitBytes float64
	// hourBytes maps an hour envelope value (keyState.hourHi) to bytes.
	hourBytes *[256]float64
	base      ModelParams
	maxKeys   int

	vcfg      map[string]*vendorConfig // configured vendors
	defaultVC *vendorConfig

	vendorIdx map[string]uint32
	vendors   []*vendorState
	keys      keyStore
	sensors   []sensorState

	seen        bool  // an event has been processed (maxT is valid)
	maxT        int64 // largest event time seen (ns)
	nextSilence int64 // event time at which the silence check runs next
	// now is the latest time given to Tick (ns; 0: never ticked), the clock guard's
	// reference once set.
	now int64
	// candT and candN are the clock guard's pending jump of an engine never ticked:
	// candN consecutive refused events, each within MaxClockJump of candT.
	candT int64
	candN uint32

	// fleet is the fleet-wide shift in effect (see fleet.go); fleetOwner: this engine
	// decides it at Tick (a standalone engine; a Sharded engine decides for its shards).
	fleet        fleetState
	fleetOwner   bool
	fleetOwn     fleetDecider
	fleetScratch []float64

	// revs tells what was revoked (nil: the use_after_revocation detector is off) and
	// uses keeps the evidence of the revoked credentials in use (see revoked.go).
	revs Revocations
	uses map[useKey]*useState

	c counters
}

// counters are the Engine's plain counters; Counters copies them.
type counters struct {
	events, rejected, late, keysRefused uint64
	sensorsUntracked, destEvicted       uint64
	clockRejected                       uint64
	detections                          [len(Kinds)]uint64
}

// Counters are the engine's counters, for metrics.
type Counters struct {
	// Events is the number of events processed.
	Events uint64
	// Rejected counts events ignored as invalid: no vendor, negative bytes, no time, a
	// time before 1970 or from 2200 on, or a credential name longer than 65535 bytes.
	Rejected uint64
	// Late counts events whose bucket had already closed (older than the watermark):
	// they are never dropped but counted in the current bucket, at their vendor's
	// latest event time (so they never move a credential's last use into the past).
	Late uint64
	// ClockRejected counts events refused by the clock guard: further ahead of their
	// vendor's latest event, and of the engine's reference (the last Tick, else the
	// engine's latest event time), than MaxClockJump. They change no state and raise
	// no detection.
	ClockRejected uint64
	// Keys is the number of keys tracked (credential keys and vendor keys).
	Keys uint64
	// Vendors is the number of vendors tracked.
	Vendors uint64
	// KeysRefused counts events whose credential key (or whose vendor, which needs a
	// vendor key) could not be created because the key bound (WithMaxKeys) was
	// reached. An event of a new vendor is then ignored; one of a known vendor still
	// counts for the vendor.
	KeysRefused uint64
	// SensorsUntracked counts events from sensors beyond the first 64 an engine has
	// seen, which get no sensor-silence tracking.
	SensorsUntracked uint64
	// DestinationsEvicted counts destinations forgotten because a vendor's destination
	// set was full.
	DestinationsEvicted uint64
	// Detections counts detections emitted, indexed like Kinds.
	Detections [len(Kinds)]uint64
}

// Detected returns the number of detections of kind k.
func (c Counters) Detected(k Kind) uint64 {
	for i, kk := range Kinds {
		if kk == k {
			return c.Detections[i]
		}
	}
	return 0
}

// Add adds o to c (for summing shards).
func (c *Counters) Add(o Counters) {
	c.Events += o.Events
	c.Rejected += o.Rejected
	c.Late += o.Late
	c.ClockRejected += o.ClockRejected
	c.Keys += o.Keys
	c.Vendors += o.Vendors
	c.KeysRefused += o.KeysRefused
	c.SensorsUntracked += o.SensorsUntracked
	c.DestinationsEvicted += o.DestinationsEvicted
	for i := range c.Detections {
		c.Detections[i] += o.Detections[i]
	}
}

// New returns an Engine for the configuration. The zero Config works: every vendor
// and credential seen in telemetry gets the default detectors.
func New(cfg Config, opts ...Option) (*Engine, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	return newEngine(cfg, o)
}

func newEngine(cfg Config, o options) (*Engine, error) {
	set, err := resolveSettings(cfg.Settings)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		set: set, sensorAlerts: !o.shardSensors, fleetOwner: !o.shardSensors, base: o.params, maxKeys: o.maxKeys,
		vcfg: make(map[string]*vendorConfig, len(cfg.Vendors)), vendorIdx: make(map[string]uint32),
		revs: o.revocations,
	}
	e.unit = "bytes/" + shortDuration(set.interval)
	e.unitBytes = float64(set.minBytes) / 16
	e.hourBytes = new([256]float64)
	for q := range e.hourBytes {
		e.hourBytes[q] = e.volumeBytes(float64(q) / hourQ)
	}
	if e.defaultVC, err = newVendorConfig(&e.set, e.base, nil); err != nil {
		return nil, err
	}
	for name, v := range cfg.Vendors {
		vc, err := newVendorConfig(&e.set, e.base, &v)
		if err != nil {
			return nil, fmt.Errorf("vendor %s: %w", name, err)
		}
		e.vcfg[name] = vc
	}
	return e, nil
}

// Counters returns a copy of the engine's counters. Call it from the goroutine that
// owns the engine (Sharded.Counters is safe from any goroutine).
func (e *Engine) Counters() Counters {
	return Counters{
		Events: e.c.events, Rejected: e.c.rejected, Late: e.c.late, ClockRejected: e.c.clockRejected,
		Keys: uint64(e.keys.len()), Vendors: uint64(len(e.vendors)), KeysRefused: e.c.keysRefused,
		SensorsUntracked: e.c.sensorsUntracked, DestinationsEvicted: e.c.destEvicted,
		Detections: e.c.detections,
	}
}

// Watermark returns the event-time watermark of vendor: the largest event time seen for
// it minus the allowed lateness (the zero time for an unknown vendor). Buckets ending
// at or before the watermark are closed.
func (e *Engine) Watermark(vendor string) time.Time {
	vi, ok := e.vendorIdx[vendor]
	if !ok {
		return time.Time{}
	}
	return time.Unix(0, e.vendors[vi].maxT-int64(e.set.lateness)).UTC()
}

// vendorState is the state of one vendor.
type vendorState struct {
	name   string
	cfg    *vendorConfig
	key    uint32 // the vendor key
	seen   bool   // an event has been seen (maxT and firstT are valid)
	maxT   int64  // largest event time seen for the vendor (ns)
	firstT int64  // first event time seen for the vendor (ns)
	// skipAt is the event time at which the vendor's clock last jumped by more than
	// MaxObservedGap (0: never): the time skipped is not observed history, so keys
	// idle across it learn no idle buckets from before the jump.
	skipAt int64
	// act is the vendor's activity; act.hist is its observed history, so the
	// vendor's observed clock is firstT + act.hist (equal to maxT when the vendor
	// never went silent for longer than MaxObservedGap).
	act   activity
	caps  []capState
	dests destSet
	// revs caches the vendor's revocations (see revoked.go); not checkpointed.
	revs revCache
}

// vendor returns the vendor named name, creating it; nil when the key bound is
// reached (a vendor needs a vendor key).
func (e *Engine) vendor(name string) (uint32, *vendorState) {
	if vi, ok := e.vendorIdx[name]; ok {
		return vi, e.vendors[vi]
	}
	if e.keys.len() >= e.maxKeys {
		return 0, nil
	}
	vi := uint32(len(e.vendors))
	v := &vendorState{name: name, cfg: e.defaultVC}
	if vc, ok := e.vcfg[name]; ok {
		v.cfg = vc
	}
	v.caps = make([]capState, len(v.cfg.caps))
	v.key = e.keys.add(vi, "", keyHash(vi, ""))
	e.vendors = append(e.vendors, v)
	e.vendorIdx[name] = vi
	return vi, v
}

// credentialKey returns the key of (vendor vi, cred), creating it; nil when the key
// bound is reached.
func (e *Engine) credentialKey(vi uint32, v *vendorState, cred string) *keyState {
	h := keyHash(vi, cred)
	if i, ok := e.keys.find(vi, cred, h); ok {
		return e.keys.at(i)
	}
	if e.keys.len() >= e.maxKeys {
		e.c.keysRefused++
		return nil
	}
	k := e.keys.at(e.keys.add(vi, cred, h))
	if _, ok := v.cfg.idle[cred]; ok {
		k.flags |= flagExpectedIdle
	}
	return k
}

func (e *Engine) key(v *vendorState, k *keyState) Key {
	return Key{Vendor: v.name, Credential: e.keys.credential(k)}
}

func (e *Engine) emit(emit func(Detection), d Detection) {
	for i, k := range Kinds {
		if k == d.Detector {
			e.c.detections[i]++
		}
	}
	if emit != nil {
		emit(d)
	}
}

// maxEventSec bounds event times (Unix seconds, exclusive): 2200-01-01T00:00:00Z.
const maxEventSec = 7258118400

// Process runs every detector on one event and calls emit for each detection, in a
// deterministic order. It is the hot path: in steady state it does not allocate.
func (e *Engine) Process(ev *telemetry.Event, emit func(Detection)) {
	e.c.events++
	if ev.Vendor == "" || ev.Bytes < 0 || len(ev.Credential) > maxCredentialLen {
		e.c.rejected++
		return
	}
	if sec := ev.Time.Unix(); sec < 0 || sec >= maxEventSec {
		e.c.rejected++ // the zero time too
		return
	}
	t := ev.Time.UnixNano()
	vi, known := e.vendorIdx[ev.Vendor]
	var v *vendorState
	if known {
		v = e.vendors[vi]
	}
	if !e.clockAccepts(v, t) {
		e.c.clockRejected++
		return
	}
	if !known {
		if vi, v = e.vendor(ev.Vendor); v == nil {
			e.c.keysRefused++
			return
		}
	}

	// Watermark: buckets ending at or before it are closed; an event for a closed
	// bucket is late and counts in the vendor's current bucket instead.
	late := v.seen && e.bucketEnd(e.bucketOf(t)) <= v.maxT-int64(e.set.lateness)
	if !v.seen {
		v.seen, v.firstT, v.maxT = true, t, t
	} else if t > v.maxT {
		if t-v.maxT > int64(e.set.maxGap) {
			v.skipAt = t // the time skipped is not observed history
		}
		v.maxT = t
	}
	tb := t // the time the event is counted at
	if late {
		e.c.late++
		tb = v.maxT
	}

	e.observeActivity(v, ev, t)
	// ot is tb on the vendor's observed clock (firstT + observed history), which the
	// learning period and dormancy count; it equals tb unless the vendor was once
	// silent for longer than MaxObservedGap.
	ot := v.firstT + v.act.hist - (v.maxT - tb)

	if e.revs != nil {
		// first: a revocation decided on this event's detections does not apply to it
		e.useAfterRevocation(vi, v, ev, t, tb, emit)
	}
	vk := e.keys.at(v.key)
	e.volume(v, vk, tb, ev.Bytes, emit)
	if ev.Credential != "" {
		if ck := e.credentialKey(vi, v, ev.Credential); ck != nil {
			e.dormant(v, ck, tb, ot, ev, emit)
			e.volume(v, ck, tb, ev.Bytes, emit)
		}
	}
	if len(v.caps) > 0 {
		e.capCheck(v, ev, tb, emit)
	}
	if ev.Dst != "" && ev.Bytes > 0 && !v.cfg.disabled.has(KindNewDestination) {
		e.destination(v, ev, tb, ot, emit)
	}

	// Event time advancing (through any vendor) drives the silence detector, so that
	// replay finds silences without a wall clock.
	if !e.seen || t > e.maxT {
		if !e.seen {
			e.nextSilence = t
		}
		e.seen, e.maxT = true, t
		if t >= e.nextSilence {
			e.checkSilence(t, emit)
			e.nextSilence = t + int64(max(e.set.silenceAfter/10, time.Second))
		}
	}
}

// clockAccepts is the clock guard: it reports whether an event at t (ns) of vendor v
// (nil: a vendor not seen yet) may move any state. An event at most MaxClockJump
// ahead of its vendor's latest event is accepted. Otherwise it is judged against the
// engine's reference:
//
//   - once the engine was ticked (the service ticks with its clock, replay with event
//     time), the later of the last Tick's time and the engine's latest event time over
//     all vendors, with the bound MaxClockJump: a vendor catching up with the others or
//     with the clock after a silence is accepted, but one event cannot put a vendor
//     ahead of both;
//   - before any Tick, the engine's latest event time, with the bound of one observed
//     gap (the larger of MaxClockJump and MaxObservedGap), so that a lone, sparse vendor
//     driven by event time alone still moves; and, as such an engine has no clock but
//     its events, confirmJump consecutive refused events within that bound of each
//     other are accepted (every vendor of the shard resuming after a long silence).
//
// The first event of an engine never ticked has nothing to be judged against and is
// accepted.
func (e *Engine) clockAccepts(v *vendorState, t int64) bool {
	j := int64(e.set.maxJump)
	if v != nil && v.seen && t <= v.maxT+j {
		return true
	}
	var ref int64
	switch {
	case e.now != 0:
		ref = e.now
		if e.seen {
			ref = max(ref, e.maxT)
		}
		return t <= ref+j
	case e.seen:
		ref, j = e.maxT, max(j, int64(e.set.maxGap))
	default:
		return true
	}
	if t <= ref+j {
		return true
	}
	if e.candN > 0 && t >= e.candT-j && t <= e.candT+j {
		e.candN++
	} else {
		e.candT, e.candN = t, 1
	}
	if e.candN >= confirmJump {
		e.candN = 0
		return true
	}
	return false
}

// Tick runs the processing-time checks (silence) at now and measures the fleet for a
// fleet-wide shift (see FleetShift). Call it periodically with the injected clock's
// time; replay can call it with event time. The latest time given to Tick is also the
// clock guard's reference (see Settings.MaxClockJump).
func (e *Engine) Tick(now time.Time, emit func(Detection)) {
	if n := now.UnixNano(); n > e.now {
		e.now = n
	}
	e.checkSilence(now.UnixNano(), emit)
	if e.fleetOwner {
		e.fleetTick(now.UnixNano())
	}
}

// bucketOf returns the bucket index of event time t (ns).
func (e *Engine) bucketOf(t int64) uint32 {
	b := floorDiv(t, int64(e.set.interval))
	if b < 0 {
		return 0
	}
	if b > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(b)
}

func (e *Engine) bucketStart(b uint32) int64 { return int64(b) * int64(e.set.interval) }

func (e *Engine) bucketEnd(b uint32) int64 { return int64(b+1) * int64(e.set.interval) }

func (e *Engine) slotOfBucket(b uint32) Slot {
	return slotOfUnix(floorDiv(e.bucketStart(b), int64(time.Second)))
}

func utc(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// severity grades a detection.
func severity(kind Kind, credential bool, magnitude float64) Severity {
	switch kind {
	case KindSilence:
		return SeverityMedium
	case KindUseAfterRevocation:
		return SeverityCritical
	case KindNewDestination:
		return SeverityHigh
	case KindCap:
		if credential && magnitude >= 2 {
			return SeverityCritical
		}
		return SeverityHigh
	case KindSpike:
		switch {
		case credential && magnitude >= 4:
			return SeverityCritical
		case magnitude >= 4 || credential:
			return SeverityHigh
		default:
			return SeverityMedium
		}
	case KindSustained:
		if credential {
			return SeverityHigh
		}
		return SeverityMedium
	}
	return SeverityMedium
}

func formatBytes(b float64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%.0f B", b)
	}
	div, exp := float64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", b/div, "KMGTPE"[exp])
}

// BucketBand is what the engine expects of a key's current volume bucket: the band a
// report draws the observed volume against.
type BucketBand struct {
	// Start is the start of the key's current bucket.
	Start time.Time
	// Expected is the model's seasonal baseline for the bucket, in bytes.
	Expected float64
	// High is the volume at which the bucket fires a spike, in bytes; +Inf while the
	// key is learning or the spike detector is off.
	High float64
}

// Band returns the expected band of key's current bucket, and false for a key the
// engine does not know. It reads state only.
func (e *Engine) Band(key Key) (BucketBand, bool) {
	vi, ok := e.vendorIdx[key.Vendor]
	if !ok {
		return BucketBand{}, false
	}
	v := e.vendors[vi]
	k := e.keys.at(v.key)
	if key.Credential != "" {
		i, ok := e.keys.find(vi, key.Credential, keyHash(vi, key.Credential))
		if !ok {
			return BucketBand{}, false
		}
		k = e.keys.at(i)
	}
	if !k.has(flagStarted) {
		return BucketBand{}, false
	}
	slot := e.slotOfBucket(k.cur)
	sc := k.model.Score(&v.cfg.params, 0, slot)
	return BucketBand{
		Start:    utc(e.bucketStart(k.cur)),
		Expected: e.volumeBytes(sc.Expected),
		High:     float64(k.spikeTrig),
	}, true
}
