package service_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkInstances measures throughput on a 3-node NATS cluster (in this process,
// R3, file storage, sync always) with 1, 2 and 3 instances (real processes) sharing 64
// vendors: b.N events are published as fast as the cluster takes them, and the clock
// stops when the group's work queue has sourced and handed out all of them and holds
// none unacknowledged. It reports events/s and the CPU time each instance spent per
// event (user + system, from /proc), so the figures can be scaled to a machine with
// more cores per instance.
//
//	go test -run '^$' -bench Instances -benchtime 200000x ./service/
func BenchmarkInstances(b *testing.B) {
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			vendors := make([]string, 64)
			for i := range vendors {
				vendors[i] = fmt.Sprintf("bench%02d", i)
			}
			f := newFleet(b, n, 16, vendors)
			names := make([]string, 0, n)
			for i := range n {
				names = append(names, fmt.Sprintf("ks%d", i+1))
			}
			f.settled(b, "ks1", names)
			cpu0 := map[string]time.Duration{}
			for name, k := range f.ks {
				cpu0[name] = processCPU(b, k.PID())
			}
			ctx := context.Background()
			b.ResetTimer()
			began := time.Now()
			var futures []jetstream.PubAckFuture
			for i := range b.N {
				e := telemetry.Event{Time: time.Now().UTC(), Vendor: vendors[i%len(vendors)], Credential: "k" + strconv.Itoa(i%7),
					Dst: "203.0.113.9", DstPort: 443, Bytes: 1000, Records: 1, Sensor: "gw-1"}
				fut, err := f.r.sensor.PublishAsync("egress."+e.Vendor, telemetry.AppendJSON(nil, &e))
				if err != nil {
					b.Fatal(err)
				}
				futures = append(futures, fut)
				if len(futures) == 2000 { // under the client's 4000 outstanding
					waitAcks(b, futures)
					futures = futures[:0]
				}
			}
			waitAcks(b, futures)
			deadline := time.Now().Add(10 * time.Minute)
			for {
				ws, err := f.r.operator.Stream(ctx, telnats.DefaultStream+"-"+telnats.DefaultGroup)
				if err == nil && ws.CachedInfo().State.LastSeq >= uint64(b.N) && ws.CachedInfo().State.Msgs == 0 {
					break
				}
				if time.Now().After(deadline) {
					b.Fatal("the instances did not handle the events in 10 minutes")
				}
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(began)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/took.Seconds(), "events/s")
			var total time.Duration
			var per []string
			for _, name := range names {
				d := processCPU(b, f.ks[name].PID()) - cpu0[name]
				total += d
				per = append(per, fmt.Sprintf("%s %.1f µs", name, float64(d.Microseconds())/float64(b.N)))
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "instance-cpu-ns/event")
			b.Logf("%d instances: %d events in %s; instance CPU per event: %s", n, b.N, took.Round(time.Millisecond), strings.Join(per, ", "))
		})
	}
}

func waitAcks(b *testing.B, futures []jetstream.PubAckFuture) {
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatalf("publish: %v", err)
		case <-time.After(30 * time.Second):
			b.Fatal("publish not acknowledged in 30s")
		}
	}
}

// processCPU returns the user and system time process pid has used (Linux /proc).
func processCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("cpu of %d: %v", pid, err)
	}
	// Fields after the command name (which is in parentheses): utime is the 14th and
	// stime the 15th field of the line, in clock ticks (100 per second on Linux).
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
