package nats

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/killswitch-dev/killswitch/telemetry/telemetrytest"
)

// BenchmarkJetStreamSource measures consuming telemetry through the durable pull
// consumer with a no-op handler, every message acknowledged, in both AckModes. b.N
// events are published first to the embedded server (file storage, sync always; the
// publication rate is reported separately as published/s) and shared by the modes;
// each run consumes them from the start with a fresh durable consumer and stops the
// clock when the server's acknowledgement floor reaches the last one.
func BenchmarkJetStreamSource(b *testing.B) {
	s := testharness.NATS(b)
	nc := testharness.Connect(b, s)
	pubConn := testharness.Connect(b, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	pub, err := NewPublisher(pubConn, PublisherOptions{})
	if err != nil {
		b.Fatal(err)
	}
	published, runs := 0, 0
	r := rand.New(rand.NewPCG(1, 2))
	for _, mode := range []struct {
		name string
		mode AckMode
	}{{"batch", AckBatch}, {"each", AckEachMessage}} {
		b.Run(mode.name, func(b *testing.B) {
			n := b.N
			runs++
			src, err := NewJetStreamSource(ctx, nc, JetStreamOptions{Durable: fmt.Sprintf("bench-%s-%d", mode.name, runs), AckMode: mode.mode})
			if err != nil {
				b.Fatal(err)
			}
			if published < n {
				pubStart := time.Now()
				for i := published; i < n; i++ {
					e := telemetrytest.CorpusEvent(r, i)
					if _, err := pub.PublishAsync(&e); err != nil {
						b.Fatal(err)
					}
				}
				if err := pub.WaitAsync(ctx); err != nil {
					b.Fatal(err)
				}
				b.Logf("published %d events at %.0f/s", n-published, float64(n-published)/time.Since(pubStart).Seconds())
				published = n
			}
			cons, err := src.js.Consumer(ctx, DefaultStream, src.opts.Durable)
			if err != nil {
				b.Fatal(err)
			}
			var handled atomic.Int64
			h := telemetry.HandlerFunc(func(_ context.Context, batch []telemetry.Event) error {
				handled.Add(int64(len(batch)))
				return nil
			})
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			runCtx, stop := context.WithCancel(ctx)
			errc := make(chan error, 1)
			go func() { errc <- src.Run(runCtx, h) }()
			// Done when every event was handed on and acknowledged (the server's floor).
			for {
				if handled.Load() >= int64(n) {
					info, err := cons.Info(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if info.AckFloor.Stream >= uint64(n) {
						break
					}
				}
				if ctx.Err() != nil {
					b.Fatalf("consumed %d of %d", handled.Load(), n)
				}
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			stop()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		})
	}
}
