package jetstream

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// wireEvents returns n events of a realistic scenario in the wire format, one per slice.
func wireEvents(tb testing.TB, n int) [][]byte {
	tb.Helper()
	sc := scenario.New(scenario.Config{Seed: 1, Days: 14, Vendors: 8, EventsPerMinute: 20})
	out := make([][]byte, 0, n)
	sc.Events(func(e *telemetry.Event) bool {
		out = append(out, telemetry.AppendJSON(nil, e))
		return len(out) < n
	})
	return out
}

// BenchmarkDecodeDetect is the in-process hot path on one core: decode the wire JSON
// and run every detector on the event.
//
//	go test -run '^$' -bench DecodeDetect -benchtime 2000000x ./pipeline/jetstream/
func BenchmarkDecodeDetect(b *testing.B) {
	msgs := wireEvents(b, 1<<20)
	dec := telemetry.NewJSONDecoder(telemetry.DecodeOptions{})
	eng, err := detectors.New(detectors.Config{})
	if err != nil {
		b.Fatal(err)
	}
	emit := func(detectors.Detection) {}
	var ev telemetry.Event
	// learn first, so the benchmark measures the steady state
	for _, m := range msgs {
		if err := dec.Decode(m, &ev); err != nil {
			b.Fatal(err)
		}
		eng.Process(&ev, emit)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		m := msgs[i%len(msgs)]
		if err := dec.Decode(m, &ev); err != nil {
			b.Fatal(err)
		}
		ev.Time = ev.Time.Add(14 * 24 * time.Hour * time.Duration(i/len(msgs)+1)) // keep event time moving forward
		eng.Process(&ev, emit)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkIngestJetStream measures events/s end to end through JetStream on this
// machine: a stored stream of events consumed by the durable consumer, decoded, run
// through the sharded detectors and acknowledged once their detections are stored.
// Publishing is not timed (with sync always each stored message is one fsync).
//
//	go test -run '^$' -bench IngestJetStream -benchtime 200000x ./pipeline/jetstream/
func BenchmarkIngestJetStream(b *testing.B) {
	ctx := context.Background()
	srv := testharness.NATS(b)
	nc := testharness.Connect(b, srv)
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EGRESS", Subjects: []string{"egress.>"}, Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	msgs := wireEvents(b, b.N)
	for i, m := range msgs {
		var v []byte
		if j := bytes.Index(m, []byte(`"vendor":"`)); j >= 0 {
			v = m[j+10:]
			v = v[:bytes.IndexByte(v, '"')]
		}
		if _, err := js.PublishAsync("egress."+string(v), m); err != nil {
			b.Fatal(err)
		}
		if i%2000 == 1999 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	if _, err := EnsureDetectionsStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	p, err := pipeline.New(pipeline.Config{Shards: runtime.GOMAXPROCS(0), Sink: Sink(js, nil)})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	in := p.Ingest()
	src, err := telnats.NewJetStreamSource(ctx, nc, telnats.JetStreamOptions{BindOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(rctx, in) }()
	for {
		c, _ := js.Consumer(ctx, "EGRESS", "killswitch-telemetry")
		if ci, err := c.Info(ctx); err == nil && ci.AckFloor.Stream >= uint64(b.N) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
}
