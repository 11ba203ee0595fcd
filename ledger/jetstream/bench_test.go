package jetstream

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
)

// BenchmarkAppend measures a group of 4 records, the service's critical path (detection,
// incident, decision, intent): appended one after another, or queued together and
// waited for through the last. One op is one group; p50-ns and p99-ns are its latency.
func BenchmarkAppend(b *testing.B) {
	const group = 4
	ctx := context.Background()
	srv := testharness.NATS(b)
	s := openStream(b, connect(b, srv))
	n := 0
	next := func() ledger.Entry {
		n++
		return named(fmt.Sprintf("bench-%d", n), n)
	}
	b.Run("sequential", func(b *testing.B) {
		var lat []time.Duration
		for b.Loop() {
			start := time.Now()
			for range group {
				if _, err := s.Append(ctx, next()); err != nil {
					b.Fatal(err)
				}
			}
			lat = append(lat, time.Since(start))
		}
		reportLatency(b, lat)
	})
	b.Run("pipelined", func(b *testing.B) {
		var lat []time.Duration
		ps := make([]*ledger.Pending, group)
		for b.Loop() {
			start := time.Now()
			for i := range ps {
				ps[i] = s.Queue(next())
			}
			if _, err := ps[group-1].Wait(ctx); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		reportLatency(b, lat)
	})
}

// reportLatency reports the median and 99th percentile of lat.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Nanoseconds()), "p99-ns")
}
