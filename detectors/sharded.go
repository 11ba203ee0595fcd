package detectors

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// Sink receives detections. The Sharded engine calls it synchronously from its shard
// goroutines (so concurrently, but one call at a time per shard, in the order that
// shard made the detections) and from Tick; an event is acknowledged only after Detect
// returned nil for each of its detections. It must not call back into the Sharded
// engine.
type Sink interface {
	// Detect hands a detection on (e.g. publishes it durably). A non-nil error means
	// it was not handed on; the engine will hand it again before anything newer.
	Detect(ctx context.Context, d Detection) error
}

// SinkFunc adapts a function to the Sink interface.
type SinkFunc func(ctx context.Context, d Detection) error

// Detect calls f.
func (f SinkFunc) Detect(ctx context.Context, d Detection) error { return f(ctx, d) }

// ShardOf returns the shard (0 ≤ shard < n) that owns vendor: a fixed hash
// (xxHash64) of the vendor name modulo n, so all keys of a vendor share a shard and the
// mapping is the same in every process.
func ShardOf(vendor string, n int) int {
	if n <= 1 {
		return 0
	}
	return int(xxhash.Sum64String(vendor) % uint64(n))
}

// Sharded runs N Engines, one per goroutine, and routes each event to the shard that
// owns its vendor, so per-key state needs no locks. It keeps the acknowledgement
// contract: the completion callback given with an event (or batch) runs only after
// the detections of that event (every event of the batch) have been handed to the
// Sink, with the Sink's error if one failed, so that the source can nak.
//
// When the sink fails, the detections it refused are kept and handed again, in
// order, before the shard processes anything else; while the sink keeps failing,
// new events are failed without being processed (their callbacks get the error), so
// nothing is lost and redelivered events are not counted twice. Only the event whose
// detection failed has been counted already; its redelivery counts it again (the
// detection itself is not lost, and its ID is stable, so it deduplicates downstream).
type Sharded struct {
	shards []*shard
	clock  clock.Clock
	sink   Sink
	eval   *Engine // an empty engine with the shards' configuration, for sensor alerts
	inline bool

	inlineMu sync.Mutex // inline: one message at a time

	tickMu sync.Mutex       // serialises ticks
	silent map[string]int64 // sensors in a silence episode → last event time then
	report TickReport       // what the last tick found (guarded by tickMu)
	fleet  fleetDecider     // the fleet-wide shift, decided on every tick (guarded by tickMu)
	moves  []float64        // scratch (guarded by tickMu)

	mu     sync.RWMutex // held for reading while enqueueing; Close takes it for writing
	closed bool
	wg     sync.WaitGroup
}

type msgKind uint8

const (
	msgEvent msgKind = iota
	msgBatch
	msgTick
	msgSnapshot
	msgSwap
	msgFleet
)

type shardMsg struct {
	kind msgKind
	ctx  context.Context
	ev   telemetry.Event
	evs  []telemetry.Event
	idx  []int32 // indexes into evs that belong to this shard (nil: all)
	now  time.Time
	eng  *Engine                  // msgSwap
	buf  *bytes.Buffer            // msgSnapshot
	keep func(vendor string) bool // msgSnapshot: the vendors written (nil: all)
	view *tickView                // msgTick: the shard's sensors and latest event time
	flt  fleetState               // msgFleet: the fleet state to apply
	done func(error)              // msgEvent
	tr   *tracker                 // every other kind
	out  chan<- shardSnapshotDone // msgSnapshot
}

type shardSnapshotDone struct {
	i   int
	err error
}

// tracker calls done once every part of a batch (one per shard) has finished.
type tracker struct {
	left atomic.Int32
	mu   sync.Mutex
	err  error
	done func(error)
}

func newTracker(parts int, done func(error)) *tracker {
	t := &tracker{done: done}
	t.left.Store(int32(parts))
	return t
}

func (t *tracker) finish(err error) {
	if err != nil {
		t.mu.Lock()
		if t.err == nil {
			t.err = err
		}
		t.mu.Unlock()
	}
	if t.left.Add(-1) == 0 && t.done != nil {
		t.mu.Lock()
		err := t.err
		t.mu.Unlock()
		t.done(err)
	}
}

// tickView is what one shard reports on a tick.
type tickView struct {
	sensors []sensorState
	latest  int64     // largest event time processed (ns); 0 before the first event
	moves   []float64 // the moves of the shard's vendors (see Engine.fleetMoves)
}

// TickReport is what the last tick found, for the telemetry health the playbooks see.
type TickReport struct {
	// At is the time of the tick.
	At time.Time
	// Latest is the largest event time processed (the zero time before the first event).
	Latest time.Time
	// Sensors is the number of sensors tracked.
	Sensors int
	// SilentSensors names the sensors in a silence episode, sorted.
	SilentSensors []string
}

type shard struct {
	i        int
	eng      *Engine
	observer Observer
	in       chan shardMsg
	sink     Sink
	pending  []Detection // refused by the sink, handed again first

	// emission state of the message being processed
	ctx  context.Context
	err  error
	emit func(Detection)

	n        uint64 // messages processed
	cmu      sync.Mutex
	counters Counters // published copy of eng's counters
}

// NewSharded returns a Sharded engine with n shards (at least 1) for the
// configuration, handing detections to sink. Close it when done.
func NewSharded(cfg Config, n int, sink Sink, opts ...Option) (*Sharded, error) {
	if sink == nil {
		return nil, fmt.Errorf("%w: nil sink", ErrConfig)
	}
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	o.shardSensors = true
	n = max(1, n)
	eval, err := newEngine(cfg, o)
	if err != nil {
		return nil, err
	}
	s := &Sharded{clock: o.clock, sink: sink, eval: eval, inline: o.inline, silent: map[string]int64{}}
	for i := range n {
		eng, err := newEngine(cfg, o)
		if err != nil {
			return nil, err
		}
		sh := &shard{i: i, eng: eng, observer: o.observer, sink: sink}
		if !o.inline {
			sh.in = make(chan shardMsg, o.buffer)
		}
		sh.emit = sh.handOn
		s.shards = append(s.shards, sh)
	}
	if o.inline {
		return s, nil
	}
	for _, sh := range s.shards {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sh.run()
		}()
	}
	return s, nil
}

// Shards returns the number of shards.
func (s *Sharded) Shards() int { return len(s.shards) }

func (s *Sharded) send(ctx context.Context, i int, m shardMsg) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if s.inline {
		s.inlineMu.Lock()
		defer s.inlineMu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
		s.shards[i].handle(m)
		return nil
	}
	select {
	case s.shards[i].in <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Submit hands one event to the shard that owns its vendor. done is called exactly
// once, from the shard's goroutine, after the event's detections were handed to the
// sink: with nil, or with the error that stopped them (the source should nak). Submit
// blocks while the shard's queue is full; if ctx ends first (or the engine is closed),
// Submit returns the error and done is never called. The event is copied.
func (s *Sharded) Submit(ctx context.Context, ev *telemetry.Event, done func(error)) error {
	return s.send(ctx, ShardOf(ev.Vendor, len(s.shards)), shardMsg{kind: msgEvent, ctx: ctx, ev: *ev, done: done})
}

// SubmitBatch hands a batch of events to their shards. done is called exactly once,
// after every event's detections were handed to the sink, with nil or the first
// error. evs must not be modified until done is called. If SubmitBatch returns an
// error, done is never called; part of the batch may already have been processed
// (the source redelivers it, as after a crash).
func (s *Sharded) SubmitBatch(ctx context.Context, evs []telemetry.Event, done func(error)) error {
	n := len(s.shards)
	if len(evs) == 0 {
		if done != nil {
			done(nil)
		}
		return nil
	}
	if n == 1 {
		return s.send(ctx, 0, shardMsg{kind: msgBatch, ctx: ctx, evs: evs, tr: newTracker(1, done)})
	}
	parts := make([][]int32, n)
	for i := range evs {
		sh := ShardOf(evs[i].Vendor, n)
		parts[sh] = append(parts[sh], int32(i))
	}
	used := 0
	for _, p := range parts {
		if len(p) > 0 {
			used++
		}
	}
	tr := newTracker(used, done)
	for i, p := range parts {
		if len(p) == 0 {
			continue
		}
		if len(p) == len(evs) {
			p = nil // the whole batch: no index
		}
		if err := s.send(ctx, i, shardMsg{kind: msgBatch, ctx: ctx, evs: evs, idx: p, tr: tr}); err != nil {
			// the parts not sent never finish, so done is never called
			return err
		}
	}
	return nil
}

// Tick runs the processing-time checks (silence) at the clock's time and waits until
// the resulting detections were handed to the sink. Vendor silence is evaluated by
// each shard (also as event time advances); sensor silence needs every shard's view of
// a sensor, so the Sharded engine evaluates it here, on Tick only: replay through a
// Sharded engine should call TickAt with event time.
func (s *Sharded) Tick(ctx context.Context) error {
	return s.TickAt(ctx, s.clock.Now())
}

// TickAt is Tick at an explicit time (replay drives it with event time).
func (s *Sharded) TickAt(ctx context.Context, now time.Time) error {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	views := make([]tickView, len(s.shards))
	if err := s.broadcast(ctx, func(i int, tr *tracker) shardMsg {
		return shardMsg{kind: msgTick, ctx: ctx, now: now, tr: tr, view: &views[i]}
	}); err != nil {
		return err
	}
	known, err := s.sensorSilence(ctx, now, views)
	if ferr := s.fleetTick(ctx, now, views); err == nil {
		err = ferr
	}
	rep := TickReport{At: now, Sensors: known}
	if len(s.silent) > 0 {
		rep.SilentSensors = slices.Sorted(maps.Keys(s.silent))
	}
	for _, v := range views {
		if v.latest > 0 && (rep.Latest.IsZero() || v.latest > rep.Latest.UnixNano()) {
			rep.Latest = utc(v.latest)
		}
	}
	s.report = rep
	return err
}

// fleetTick decides the fleet-wide shift from the moves every shard measured and hands
// a changed state to every shard. Called with tickMu held.
func (s *Sharded) fleetTick(ctx context.Context, now time.Time, views []tickView) error {
	s.moves = s.moves[:0]
	for _, v := range views {
		s.moves = append(s.moves, v.moves...)
	}
	e := s.eval
	b := e.bucketOf(now.UnixNano() - 1)
	if !s.fleet.decide(s.moves, now.UnixNano(), b, e.bucketStart(b)) {
		return nil
	}
	st := s.fleet.state
	return s.broadcast(ctx, func(i int, tr *tracker) shardMsg {
		return shardMsg{kind: msgFleet, ctx: ctx, flt: st, tr: tr}
	})
}

// FleetShifts returns the fleet-wide shifts observed (the latest 256), oldest first. It
// is safe for concurrent use.
func (s *Sharded) FleetShifts() []FleetShift {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	return slices.Clone(s.fleet.log)
}

// Fleet returns the fleet-wide shift state as of the last tick. It is safe for
// concurrent use.
func (s *Sharded) Fleet() FleetStatus {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	return s.fleet.status()
}

// LastTick returns what the last tick found (the zero TickReport before the first).
// It is safe for concurrent use.
func (s *Sharded) LastTick() TickReport {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	r := s.report
	r.SilentSensors = slices.Clone(r.SilentSensors)
	return r
}

// sensorSilence merges the shards' views of each sensor, raises the alerts, and returns
// the number of sensors known.
func (s *Sharded) sensorSilence(ctx context.Context, now time.Time, views []tickView) (int, error) {
	merged := map[string]*activity{}
	var names []string
	for _, v := range views {
		for _, ss := range v.sensors {
			a, ok := merged[ss.name]
			if !ok {
				a = new(activity)
				merged[ss.name] = a
				names = append(names, ss.name)
			}
			mergeActivity(a, ss.act, !ok)
		}
	}
	e := s.eval
	if e.set.disabled.has(KindSilence) {
		return len(names), nil
	}
	slices.Sort(names)
	for _, name := range names {
		a := merged[name]
		if last, ok := s.silent[name]; ok {
			if a.lastT <= last {
				continue // still in the same silence episode
			}
			delete(s.silent, name)
		}
		line := e.silenceLine(a)
		if line < 0 || now.UnixNano()-a.lastT < line {
			continue
		}
		d := e.silenceDetection("", name, a, line)
		if err := s.sink.Detect(ctx, d); err != nil {
			return len(names), fmt.Errorf("detectors: sink refused detection %s: %w", d.ID, err)
		}
		s.silent[name] = a.lastT
		e.emit(nil, d) // counted in Counters
	}
	return len(names), nil
}

// broadcast sends one message to every shard and waits for all of them.
func (s *Sharded) broadcast(ctx context.Context, mk func(i int, tr *tracker) shardMsg) error {
	res := make(chan error, 1)
	tr := newTracker(len(s.shards), func(err error) { res <- err })
	for i := range s.shards {
		if err := s.send(ctx, i, mk(i, tr)); err != nil {
			for j := i; j < len(s.shards); j++ {
				tr.finish(err)
			}
			break
		}
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Counters returns the sum of the shards' counters, as last published by each shard
// (after every message when its queue is empty, else every 64 messages). It is safe
// for concurrent use.
func (s *Sharded) Counters() Counters {
	var c Counters
	for _, sh := range s.shards {
		sh.cmu.Lock()
		c.Add(sh.counters)
		sh.cmu.Unlock()
	}
	s.tickMu.Lock()
	for i, n := range s.eval.c.detections {
		c.Detections[i] += n
	}
	s.tickMu.Unlock()
	return c
}

// Close stops accepting events, lets every shard finish the messages already queued
// (their callbacks are called as usual) and waits for the shard goroutines to exit.
func (s *Sharded) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, sh := range s.shards {
		if sh.in != nil {
			close(sh.in)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (sh *shard) run() {
	for m := range sh.in {
		sh.handle(m)
	}
}

// publish copies the engine's counters for Counters: after every message when the
// queue is empty, else every 64 messages, and always before the callbacks run.
func (sh *shard) publish() {
	sh.n++
	if len(sh.in) == 0 || sh.n%64 == 0 {
		c := sh.eng.Counters()
		sh.cmu.Lock()
		sh.counters = c
		sh.cmu.Unlock()
	}
}

// handOn is the emit function of the shard's engine: it hands a detection to the sink
// unless an earlier one of the same message failed (then it is kept for later).
func (sh *shard) handOn(d Detection) {
	if sh.err != nil {
		sh.pending = append(sh.pending, d)
		return
	}
	if err := sh.sink.Detect(sh.ctx, d); err != nil {
		sh.err = fmt.Errorf("detectors: sink refused detection %s: %w", d.ID, err)
		sh.pending = append(sh.pending, d)
	}
}

// process runs the engine on one event, then the observer.
func (sh *shard) process(ev *telemetry.Event) {
	sh.eng.Process(ev, sh.emit)
	if sh.observer != nil {
		sh.observer(sh.eng, ev)
	}
}

// flush hands the pending detections to the sink, in order.
func (sh *shard) flush(ctx context.Context) error {
	for len(sh.pending) > 0 {
		d := sh.pending[0]
		if err := sh.sink.Detect(ctx, d); err != nil {
			return fmt.Errorf("detectors: sink still refuses detection %s (%d pending): %w", d.ID, len(sh.pending), err)
		}
		sh.pending[0] = Detection{}
		sh.pending = sh.pending[1:]
	}
	sh.pending = nil
	return nil
}

func (sh *shard) handle(m shardMsg) {
	ctx := m.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	finish := func(err error) {
		sh.publish()
		if m.done != nil {
			m.done(err)
		}
		if m.tr != nil {
			m.tr.finish(err)
		}
	}
	switch m.kind {
	case msgSnapshot:
		err := sh.eng.snapshot(m.buf, m.keep)
		sh.publish()
		m.out <- shardSnapshotDone{i: sh.i, err: err}
		return
	case msgSwap:
		sh.eng = m.eng
		sh.pending = nil
		finish(nil)
		return
	case msgFleet:
		sh.eng.applyFleet(m.flt)
		finish(nil)
		return
	}
	if err := sh.flush(ctx); err != nil {
		finish(err)
		return
	}
	sh.ctx, sh.err = ctx, nil
	switch m.kind {
	case msgEvent:
		sh.process(&m.ev)
	case msgBatch:
		if m.idx == nil {
			for i := range m.evs {
				sh.process(&m.evs[i])
			}
		} else {
			for _, i := range m.idx {
				sh.process(&m.evs[i])
			}
		}
	case msgTick:
		sh.eng.Tick(m.now, sh.emit)
		if m.view != nil {
			m.view.sensors = slices.Clone(sh.eng.sensors)
			if sh.eng.seen {
				m.view.latest = sh.eng.maxT
			}
			m.view.moves = sh.eng.fleetMoves(m.now.UnixNano(), nil)
		}
	}
	err := sh.err
	sh.ctx, sh.err = nil, nil
	finish(err)
}

// Snapshot writes the state of every shard to w (format in snapshot.go). Each shard
// serialises its engine in its own goroutine, between two messages, so the snapshot
// holds every event whose callback had been called when Snapshot was called.
func (s *Sharded) Snapshot(ctx context.Context, w io.Writer) error {
	return s.snapshot(ctx, w, nil)
}

func (s *Sharded) snapshot(ctx context.Context, w io.Writer, keep func(vendor string) bool) error {
	n := len(s.shards)
	bufs := make([]*bytes.Buffer, n)
	out := make(chan shardSnapshotDone, n)
	for i := range s.shards {
		bufs[i] = new(bytes.Buffer)
		if err := s.send(ctx, i, shardMsg{kind: msgSnapshot, buf: bufs[i], keep: keep, out: out}); err != nil {
			return err
		}
	}
	for range n {
		select {
		case r := <-out:
			if r.err != nil {
				return fmt.Errorf("shard %d: %w", r.i, r.err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	enc := newEncoder(w)
	enc.bytes(shardedMagic[:])
	enc.u16(snapshotVersion)
	enc.u16(0)
	enc.u32(uint32(n))
	for _, b := range bufs {
		enc.u64(uint64(b.Len()))
		enc.bytes(b.Bytes())
	}
	if err := enc.finish(); err != nil {
		return fmt.Errorf("detectors: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the state of every shard with a snapshot written by
// Sharded.Snapshot, with any number of shards: each vendor goes to the shard that owns
// it now. Call it before submitting events: the state of events processed while it
// runs is replaced. Bad input returns an error wrapping ErrSnapshot and changes
// nothing.
func (s *Sharded) Restore(ctx context.Context, r io.Reader) error {
	engines, err := s.emptyEngines()
	if err != nil {
		return err
	}
	route := func(vendor string) *Engine { return engines[ShardOf(vendor, len(engines))] }
	if err := decodeSharded(r, engines, route); err != nil {
		return err
	}
	st := restoredFleet(engines)
	for _, e := range engines {
		e.finishRestore()
	}
	if err := s.swap(ctx, engines); err != nil {
		return err
	}
	s.tickMu.Lock()
	s.fleet.restored(st, s.eval.bucketStart(st.since))
	s.tickMu.Unlock()
	return nil
}

// restoredFleet gives every engine the fleet state of the snapshot (the parts of a
// Sharded snapshot carry the same; an engine that received no part has none) and
// returns it.
func restoredFleet(engines []*Engine) fleetState {
	var st fleetState
	for _, e := range engines {
		if e.fleet.shifts > st.shifts || (e.fleet.shifts == st.shifts && e.fleet.dir != 0) {
			st = e.fleet
		}
	}
	for _, e := range engines {
		e.fleet = st
	}
	return st
}

// emptyEngines returns one engine per shard with the shards' configuration and no state.
func (s *Sharded) emptyEngines() ([]*Engine, error) {
	engines := make([]*Engine, len(s.shards))
	for i, sh := range s.shards {
		// the configuration is immutable after construction, so reading it is safe
		var err error
		if engines[i], err = sh.eng.emptyCopy(); err != nil {
			return nil, err
		}
	}
	return engines, nil
}

// swap makes engines the shards' state.
func (s *Sharded) swap(ctx context.Context, engines []*Engine) error {
	return s.broadcast(ctx, func(i int, tr *tracker) shardMsg {
		return shardMsg{kind: msgSwap, eng: engines[i], tr: tr}
	})
}

// decodeSharded decodes a Sharded snapshot from r into engines: each vendor goes to the
// engine route returns for it, the engine-wide state of part p is merged into engine
// p modulo len(engines).
func decodeSharded(r io.Reader, engines []*Engine, route func(vendor string) *Engine) error {
	body, err := readVerified(r, shardedMagic)
	if err != nil {
		return err
	}
	d := newDecoder(body)
	parts := d.count(16, math.MaxInt32)
	for p := range parts {
		size := d.u64()
		if d.err != nil {
			break
		}
		if size > uint64(len(d.b)-d.off) {
			d.fail("shard %d: %d bytes claimed, %d left", p, size, len(d.b)-d.off)
			break
		}
		part := d.b[d.off : d.off+int(size)]
		d.off += int(size)
		inner, err := verify(part, engineMagic)
		if err != nil {
			return fmt.Errorf("shard %d: %w", p, err)
		}
		sub := newDecoder(inner)
		engines[p%len(engines)].decodeBody(sub, route, false)
		if sub.err == nil && sub.off != len(sub.b) {
			sub.fail("%d trailing bytes", len(sub.b)-sub.off)
		}
		if sub.err != nil {
			return fmt.Errorf("shard %d: %w", p, sub.err)
		}
	}
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes", len(d.b)-d.off)
	}
	if d.err != nil {
		return d.err
	}
	if parts == 0 {
		return fmt.Errorf("%w: no shards", ErrSnapshot)
	}
	return nil
}
