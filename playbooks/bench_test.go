package playbooks_test

import (
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// BenchmarkEvaluate measures the decision latency of the shipped library (six playbooks
// and guards, evaluated in one prepared query) on realistic inputs, and reports the p50
// and p99 of the per-evaluation latencies (target p99 ≤ 1 ms) and the compilations per
// evaluation (must be 0: nothing is compiled or prepared on the evaluation path).
//
//	go test ./playbooks -run '^$' -bench BenchmarkEvaluate -benchmem
func BenchmarkEvaluate(b *testing.B) {
	benchmarkEvaluate(b)
}

// BenchmarkEvaluateServiceHeap is BenchmarkEvaluate with 64 MiB of live heap, the order of
// what the service keeps resident (embedded nats-server with JetStream, detector state,
// consumer buffers). With the 4 MiB heap of a bare benchmark the collector runs every
// ~70 decisions and its fixed cost (OPA's large global tables are roots) lands in the
// p99; with a service-sized heap it runs every ~1,000 and the p99 shows evaluation.
func BenchmarkEvaluateServiceHeap(b *testing.B) {
	resident := make([][]byte, 64)
	for i := range resident {
		resident[i] = make([]byte, 1<<20)
	}
	benchmarkEvaluate(b)
	runtime.KeepAlive(resident)
}

func benchmarkEvaluate(b *testing.B) {
	for _, name := range []string{"exfil_critical", "blast_radius", "sustained_after_quarantine", "spike_medium"} {
		b.Run(name, func(b *testing.B) {
			e, err := playbooks.New(context.Background(), playbooks.Options{
				Sources: []playbooks.Source{playbooks.Shipped()}, Stopwatch: clock.Real{},
			})
			if err != nil {
				b.Fatal(err)
			}
			in := shippedInput(b, name)
			ctx := context.Background()
			for range 100 { // warm up
				e.Evaluate(ctx, in)
			}
			compiles := e.Compilations()
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				res := e.Evaluate(ctx, in)
				if res.Escalated {
					b.Fatal(res.Errors)
				}
				lat = append(lat, res.EvalDuration)
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			b.ReportMetric(float64(e.Compilations()-compiles)/float64(b.N), "compiles/op")
		})
	}
}
