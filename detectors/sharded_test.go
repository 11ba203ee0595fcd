package detectors

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// recorder is a Sink that remembers what it was handed.
type recorder struct {
	mu   sync.Mutex
	dets []Detection
	ids  map[string]bool
	fail atomic.Bool
}

func (r *recorder) Detect(ctx context.Context, d Detection) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.fail.Load() {
		return errors.New("sink unavailable")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	r.dets = append(r.dets, d)
	r.ids[d.ID] = true
	return nil
}

func (r *recorder) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func (r *recorder) sorted() []Detection {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.dets)
	slices.SortFunc(out, func(a, b Detection) int {
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sortDetections(ds []Detection) []Detection {
	out := slices.Clone(ds)
	slices.SortFunc(out, func(a, b Detection) int {
		if c := a.DetectedAt.Compare(b.DetectedAt); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
	return out
}

func mustSharded(t testing.TB, n int, sink Sink, opts ...Option) *Sharded {
	t.Helper()
	s, err := NewSharded(snapshotConfig, n, sink, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// submitBatches submits evs in batches and waits for every callback.
func submitBatches(t testing.TB, s *Sharded, evs []telemetry.Event, size int) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < len(evs); i += size {
		batch := evs[i:min(i+size, len(evs))]
		wg.Add(1)
		if err := s.SubmitBatch(context.Background(), batch, func(err error) {
			if err != nil {
				failed.Add(1)
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d batches failed", failed.Load())
	}
}

// TestShardedMatchesEngine: sharding changes nothing but the order of detections.
func TestShardedMatchesEngine(t *testing.T) {
	evs := scenarioEvents(t, 1, 14)
	one := mustEngine(t, snapshotConfig)
	want := sortDetections(detect(one, evs))
	for _, n := range []int{1, 3} {
		rec := &recorder{}
		s := mustSharded(t, n, rec)
		submitBatches(t, s, evs, 1000)
		if got := rec.sorted(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%d shards: %d detections, one engine: %d; they differ", n, len(got), len(want))
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if c, w := s.Counters(), one.Counters(); c.Events != w.Events || c.Detections != w.Detections || c.Keys != w.Keys {
			t.Fatalf("%d shards: counters %+v, want %+v", n, c, w)
		}
	}
}

// TestShardedAcksAfterSink: each event's callback runs only after all of its
// detections reached the sink. Run with -race.
func TestShardedAcksAfterSink(t *testing.T) {
	evs := scenarioEvents(t, 2, 12)
	// which detections each event produces, from a single engine
	byEvent := map[int][]string{}
	one := mustEngine(t, snapshotConfig)
	for i := range evs {
		one.Process(&evs[i], func(d Detection) { byEvent[i] = append(byEvent[i], d.ID) })
	}
	if len(byEvent) == 0 {
		t.Fatal("no detections")
	}
	rec := &recorder{}
	s := mustSharded(t, 4, rec, WithQueue(64))
	var wg sync.WaitGroup
	var bad atomic.Int64
	// four producers, each submitting the events of its own vendors in order
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range evs {
				if ShardOf(evs[i].Vendor, 4) != p {
					continue
				}
				wg.Add(1)
				err := s.Submit(context.Background(), &evs[i], func(err error) {
					defer wg.Done()
					if err != nil {
						bad.Add(1)
						return
					}
					for _, id := range byEvent[i] {
						if !rec.has(id) {
							bad.Add(1)
						}
					}
				})
				if err != nil {
					t.Error(err)
					wg.Done()
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d callbacks ran before their detections reached the sink (or failed)", bad.Load())
	}
	if c := s.Counters(); c.Events != uint64(len(evs)) {
		t.Fatalf("events %d, want %d", c.Events, len(evs))
	}
}

// TestShardedSinkFailure: a failing sink fails the callbacks, keeps the refused
// detection and hands it again before anything newer; events arriving while it fails
// are not processed.
func TestShardedSinkFailure(t *testing.T) {
	rec := &recorder{}
	cfg := Config{Vendors: killswitch.Inventory{"acme": {Caps: []killswitch.Cap{{Bytes: 10, Per: time.Hour}}}}}
	s, err := NewSharded(cfg, 2, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	submit := func(ev telemetry.Event) error {
		res := make(chan error, 1)
		if err := s.Submit(context.Background(), &ev, func(err error) { res <- err }); err != nil {
			t.Fatal(err)
		}
		return <-res
	}
	ev := func(m int, b int64) telemetry.Event {
		return telemetry.Event{Time: day(0).Add(time.Duration(m) * time.Minute), Vendor: "acme", Bytes: b}
	}
	if err := submit(ev(0, 5)); err != nil {
		t.Fatal(err)
	}
	rec.fail.Store(true)
	if err := submit(ev(1, 10)); err == nil { // crosses the cap: the detection is refused
		t.Fatal("the callback did not get the sink's error")
	}
	if err := submit(ev(2, 1)); err == nil { // still failing: not processed
		t.Fatal("an event was acknowledged while the sink refused a pending detection")
	}
	if c := s.Counters(); c.Events != 2 {
		t.Fatalf("events processed %d, want 2 (the third was refused before processing)", c.Events)
	}
	rec.fail.Store(false)
	if err := submit(ev(61, 20)); err != nil { // next hour: crosses again
		t.Fatal(err)
	}
	got := rec.sorted()
	if len(got) != 2 || got[0].Window.Start != day(0) || got[1].Window.Start != day(0).Add(time.Hour) {
		t.Fatalf("sink got %+v, want the held detection then the new one", got)
	}
	if s.Counters().Detected(KindCap) != 2 {
		t.Fatalf("counters %+v", s.Counters())
	}
}

func TestShardedCloseAndTick(t *testing.T) {
	rec := &recorder{}
	clk := clock.NewManual(day(0))
	s, err := NewSharded(Config{}, 2, rec, WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	evs := series("quiet", "q1", "198.51.100.1", day(0), day(2), time.Minute, constant(1000))
	submitBatches(t, s, evs, 100)
	clk.Set(day(2).Add(10 * time.Minute))
	if err := s.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(rec.sorted()) != 0 {
		t.Fatal("silence before SilenceAfter")
	}
	clk.Set(day(2).Add(time.Hour))
	if err := s.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := rec.sorted()
	if len(got) != 2 || got[0].Detector != KindSilence || got[1].Detector != KindSilence {
		t.Fatalf("got %+v, want the vendor's and its sensor's silence", got)
	}
	// queued work is finished by Close; afterwards Submit fails
	var done atomic.Int64
	for i := range 50 {
		ev := telemetry.Event{Time: day(3).Add(time.Duration(i) * time.Second), Vendor: "v" + itoa(i), Bytes: 1}
		if err := s.Submit(context.Background(), &ev, func(error) { done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if done.Load() != 50 {
		t.Fatalf("%d callbacks after Close, want 50", done.Load())
	}
	ev := telemetry.Event{Time: day(3), Vendor: "late", Bytes: 1}
	if err := s.Submit(context.Background(), &ev, func(error) { t.Error("callback after Close") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestShardedSnapshotRepartition: a snapshot of 2 shards restored into 3 shards
// continues exactly like an engine that never stopped.
func TestShardedSnapshotRepartition(t *testing.T) {
	evs := scenarioEvents(t, 3, 14)
	half := len(evs) / 2
	want := sortDetections(detect(mustEngine(t, snapshotConfig), evs))

	rec := &recorder{}
	a := mustSharded(t, 2, rec)
	submitBatches(t, a, evs[:half], 700)
	var snap bytes.Buffer
	if err := a.Snapshot(context.Background(), &snap); err != nil {
		t.Fatal(err)
	}
	a.Close()

	b := mustSharded(t, 3, rec)
	if err := b.Restore(context.Background(), bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	submitBatches(t, b, evs[half:], 700)
	if got := rec.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after repartitioning: %d detections, want %d; they differ", len(got), len(want))
	}
	// bad input is refused and changes nothing
	bad := bytes.Clone(snap.Bytes())
	bad[len(bad)/3] ^= 1
	if err := b.Restore(context.Background(), bytes.NewReader(bad)); !errors.Is(err, ErrSnapshot) {
		t.Fatalf("corrupt sharded snapshot: %v", err)
	}
	if err := b.Restore(context.Background(), bytes.NewReader(nil)); !errors.Is(err, ErrSnapshot) {
		t.Fatalf("empty sharded snapshot: %v", err)
	}
}

// TestShardedSensorSilence: a sensor is silent only when no shard sees it any more.
func TestShardedSensorSilence(t *testing.T) {
	// two vendors on different shards, both seen through gw-1
	v1, v2 := "alpha", "beta"
	for i := 0; ShardOf(v1, 2) == ShardOf(v2, 2); i++ {
		v2 = "beta" + itoa(i)
	}
	stop1, stop2 := day(2).Add(10*time.Hour), day(2).Add(12*time.Hour)
	evs := merge(
		series(v1, "k", "198.51.100.1", day(0), day(3), time.Minute, constant(1000)),
		series(v2, "k", "198.51.100.1", day(0), day(3), time.Minute, constant(1000)),
	)
	for i := range evs {
		ev := &evs[i]
		if (ev.Vendor == v1 && !ev.Time.Before(stop1)) || (ev.Vendor == v2 && !ev.Time.Before(stop2)) {
			ev.Sensor = "gw-2" // traffic moves to another sensor
		}
	}
	rec := &recorder{}
	s := mustSharded(t, 2, rec)
	ctx := context.Background()
	for h := 0; h < 72; h++ {
		from, to := day(0).Add(time.Duration(h)*time.Hour), day(0).Add(time.Duration(h+1)*time.Hour)
		var part []telemetry.Event
		for _, ev := range evs {
			if !ev.Time.Before(from) && ev.Time.Before(to) {
				part = append(part, ev)
			}
		}
		submitBatches(t, s, part, 100)
		if err := s.TickAt(ctx, to); err != nil {
			t.Fatal(err)
		}
	}
	got := rec.sorted()
	if len(got) != 1 || got[0].Sensor != "gw-1" || got[0].Detector != KindSilence {
		t.Fatalf("got %+v, want one silence alert for gw-1", got)
	}
	if at := got[0].DetectedAt; at.Before(stop2) || at.After(stop2.Add(31*time.Minute)) {
		t.Fatalf("detected at %s, want 30 minutes after the last shard stopped seeing gw-1 (%s)", at, stop2)
	}
	if s.Counters().Detected(KindSilence) != 1 {
		t.Fatalf("counters %+v", s.Counters())
	}
}

// Inline, the engine processes on the submitting goroutine: the detections are exactly
// one engine's, in one engine's order, and every callback has run when SubmitBatch
// returns. The observer sees every event, after its detections, and may read the engine.
func TestInlineAndObserver(t *testing.T) {
	evs := scenarioEvents(t, 1, 10)
	one := mustEngine(t, snapshotConfig)
	want := detect(one, evs)
	rec := &recorder{}
	var seen, bands int
	s := mustSharded(t, 2, rec, WithInline(), WithObserver(func(e *Engine, ev *telemetry.Event) {
		seen++
		if _, ok := e.Band(Key{Vendor: ev.Vendor, Credential: ev.Credential}); ok {
			bands++
		}
	}))
	for i := 0; i < len(evs); i += 500 {
		batch := evs[i:min(i+500, len(evs))]
		done := false
		if err := s.SubmitBatch(context.Background(), batch, func(err error) {
			if err != nil {
				t.Error(err)
			}
			done = true
		}); err != nil {
			t.Fatal(err)
		}
		if !done {
			t.Fatal("inline SubmitBatch returned before its callback")
		}
	}
	if len(rec.dets) != len(want) {
		t.Fatalf("inline: %d detections, one engine: %d", len(rec.dets), len(want))
	}
	if !reflect.DeepEqual(sortDetections(rec.dets), sortDetections(want)) {
		t.Fatal("inline detections differ from one engine's")
	}
	if seen != len(evs) || bands == 0 {
		t.Fatalf("observer saw %d of %d events (%d bands)", seen, len(evs), bands)
	}
}

// A tick reports what the telemetry health is made of: sensors known and silent, and
// the newest event time.
func TestLastTick(t *testing.T) {
	cfg := Config{Settings: Settings{Interval: time.Minute, LearningPeriod: 10 * time.Minute, SilenceAfter: 5 * time.Minute}}
	rec := &recorder{}
	s, err := NewSharded(cfg, 2, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := s.LastTick(); r.Sensors != 0 || !r.Latest.IsZero() {
		t.Fatalf("before any tick: %+v", r)
	}
	var evs []telemetry.Event
	for i := range 60 {
		at := day(0).Add(time.Duration(i) * 30 * time.Second)
		evs = append(evs, telemetry.Event{Time: at, Vendor: "a", Bytes: 10, Sensor: "gw-1"})
		if i < 40 {
			evs = append(evs, telemetry.Event{Time: at, Vendor: "b", Bytes: 10, Sensor: "gw-2"})
		}
	}
	submitBatches(t, s, evs, 50)
	now := day(0).Add(30 * time.Minute)
	if err := s.TickAt(context.Background(), now); err != nil {
		t.Fatal(err)
	}
	r := s.LastTick()
	if r.Sensors != 2 || !slices.Equal(r.SilentSensors, []string{"gw-2"}) || !r.Latest.Equal(evs[len(evs)-1].Time) || !r.At.Equal(now) {
		t.Fatalf("tick report %+v", r)
	}
}
