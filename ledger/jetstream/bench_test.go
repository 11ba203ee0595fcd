package jetstream

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkAppend measures a group of 4 records, the service's critical path (detection,
// incident, decision, intent): appended one after another, or queued together and
// waited for through the last, without and with MACs (mac/…), and on an R3 stream of
// a 3-node cluster in this process (r3/…, MAC'd; one record in flight at a time, see
// writer.maxInFlight). One op is one group; p50-ns and p99-ns are its latency.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []struct {
		prefix string
		key    *ledger.Key
	}{{"", nil}, {"mac/", key(b, 'k')}} {
		benchmarkAppend(b, mode.prefix, openStream(b, connect(b, testharness.NATS(b)), StreamConfig{Key: mode.key}))
	}
	c := testharness.NATSCluster(b, 3)
	js, err := jetstream.New(testharness.Connect(b, c.Node(0)))
	if err != nil {
		b.Fatal(err)
	}
	benchmarkAppend(b, "r3/", openStream(b, js, StreamConfig{Replicas: 3, Key: key(b, 'k')}))
}

// benchmarkAppend runs the sequential and pipelined groups on s.
func benchmarkAppend(b *testing.B, prefix string, s *Stream) {
	const group = 4
	ctx := context.Background()
	n := 0
	next := func() ledger.Entry {
		n++
		return named(fmt.Sprintf("bench-%d", n), n)
	}
	b.Run(prefix+"sequential", func(b *testing.B) {
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
	b.Run(prefix+"pipelined", func(b *testing.B) {
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
