package detectors

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// benchEvents returns n events over vendors×creds keys, a few destinations per vendor
// and two sensors, spaced step apart in event time from 2026-02-02.
func benchEvents(n, vendors, creds int, step time.Duration) []telemetry.Event {
	t0 := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	vn := make([]string, vendors)
	for i := range vn {
		vn[i] = fmt.Sprintf("vendor-%03d", i)
	}
	cn := make([]string, creds)
	for i := range cn {
		cn[i] = fmt.Sprintf("cred-%05d", i)
	}
	dsts := []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "api.example.com"}
	sensors := []string{"egress-gw-1", "egress-gw-2"}
	evs := make([]telemetry.Event, n)
	for i := range evs {
		v := i % vendors
		c := (i / vendors) % creds
		evs[i] = telemetry.Event{
			Time: t0.Add(time.Duration(i) * step), Vendor: vn[v], Credential: cn[c],
			Dst: dsts[i%len(dsts)], DstPort: 443, Bytes: int64(1000 + (i*7919)%50000), Records: 3,
			Protocol: "tcp", Sensor: sensors[i%2],
		}
	}
	return evs
}

// BenchmarkEngineProcess measures the single-shard hot path in steady state: 10,000
// keys (100 vendors × 100 credentials) already learned, events advancing in time.
func BenchmarkEngineProcess(b *testing.B) {
	const n = 1 << 16
	evs := benchEvents(n, 100, 100, time.Millisecond)
	e, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	// warm up: two days of event time so that buckets close, models learn and
	// detectors are past their learning period
	warm := benchEvents(1<<20, 100, 100, 170*time.Millisecond)
	for i := range warm {
		e.Process(&warm[i], nil)
	}
	shift := warm[len(warm)-1].Time.Sub(evs[0].Time) + time.Second
	span := evs[n-1].Time.Sub(evs[0].Time) + time.Millisecond
	for i := range evs {
		evs[i].Time = evs[i].Time.Add(shift)
	}
	var dets int
	emit := func(Detection) { dets++ }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ev := &evs[i&(n-1)]
		if i > 0 && i&(n-1) == 0 {
			for j := range evs {
				evs[j].Time = evs[j].Time.Add(span)
			}
		}
		e.Process(ev, emit)
	}
	b.StopTimer()
	el := b.Elapsed()
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	b.ReportMetric(float64(el.Nanoseconds())/float64(b.N), "ns/event")
}

func benchmarkKeys(b *testing.B, keys int) {
	const vendors = 100
	creds := keys / vendors
	evs := benchEvents(keys, vendors, creds, time.Millisecond)
	var perKey float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		e, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		for j := range evs {
			e.Process(&evs[j], nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := e.Counters().Keys; got != uint64(keys+vendors) {
			b.Fatalf("keys = %d, want %d", got, keys+vendors)
		}
		perKey = float64(after.HeapAlloc-before.HeapAlloc) / float64(keys)
		runtime.KeepAlive(e)
	}
	b.ReportMetric(perKey, "B/key")
	b.ReportMetric(float64(keyStateSize), "state-B/key")
}

// BenchmarkEngineKeys100k reports the memory per key (heap in use after inserting
// 100,000 credential keys over 100 vendors, everything included: slab, key table,
// credential arena, vendor state) in B/key.
func BenchmarkEngineKeys100k(b *testing.B) { benchmarkKeys(b, 100_000) }

// BenchmarkEngineKeys1M is BenchmarkEngineKeys100k with 1,000,000 keys.
func BenchmarkEngineKeys1M(b *testing.B) { benchmarkKeys(b, 1_000_000) }

// BenchmarkSharded measures a Sharded engine (one shard per CPU) fed batches of 256
// events over 10,000 keys, waiting for every batch's callback.
func BenchmarkSharded(b *testing.B) {
	for _, batch := range []int{1, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			const n = 1 << 16
			evs := benchEvents(n, 100, 100, time.Millisecond)
			sink := SinkFunc(func(context.Context, Detection) error { return nil })
			s, err := NewSharded(Config{}, runtime.GOMAXPROCS(0), sink, WithQueue(1024))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			var wg sync.WaitGroup
			done := func(error) { wg.Done() }
			submit := func(part []telemetry.Event) {
				if batch == 1 {
					for i := range part {
						wg.Add(1)
						if err := s.Submit(ctx, &part[i], done); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				wg.Add(1)
				if err := s.SubmitBatch(ctx, part, done); err != nil {
					b.Fatal(err)
				}
			}
			// warm up: key creation and a first learned bucket
			warm := benchEvents(1<<18, 100, 100, 2*time.Millisecond)
			for i := 0; i < len(warm); i += 256 {
				submit(warm[i : i+256])
			}
			wg.Wait()
			shift := warm[len(warm)-1].Time.Sub(evs[0].Time) + time.Second
			span := evs[n-1].Time.Sub(evs[0].Time) + time.Millisecond
			for i := range evs {
				evs[i].Time = evs[i].Time.Add(shift)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				j := i & (n - 1)
				if i > 0 && j == 0 {
					wg.Wait() // the buffer is reused: wait for the previous round
					for k := range evs {
						evs[k].Time = evs[k].Time.Add(span)
					}
				}
				submit(evs[j:min(j+batch, n, j+b.N-i)])
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
		})
	}
}
