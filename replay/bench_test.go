package replay

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// BenchmarkReplay replays a file of about 2 million events (14 days, 8 vendors) through
// the whole pipeline and reports events/s and the process's peak RSS.
//
//	go test -run '^$' -bench Replay -benchtime 3x ./replay/
func BenchmarkReplay(b *testing.B) {
	for _, gz := range []bool{false, true} {
		name := "ndjson"
		if gz {
			name = "ndjson.gz"
		}
		b.Run(name, func(b *testing.B) {
			sc := scenario.New(scenario.Config{Seed: 1, Days: 14, Vendors: 8, EventsPerMinute: 19.5})
			path := b.TempDir() + "/telemetry." + name
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			n, err := sc.WriteNDJSON(f, gz)
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
			pb := shipped(b)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				rep, err := Run(context.Background(), telemetry.NewFileSource(telemetry.FileOptions{}, path), planned(sc, Options{Playbooks: pb}))
				if err != nil {
					b.Fatal(err)
				}
				if rep.Events != int64(n) {
					b.Fatalf("replayed %d events of %d", rep.Events, n)
				}
			}
			el := time.Since(start)
			b.ReportMetric(float64(n)*float64(b.N)/el.Seconds(), "events/s")
			b.ReportMetric(float64(n), "events")
			b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
		})
	}
}

// peakRSS reads the process's peak resident set size (VmHWM) from /proc, in bytes.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
