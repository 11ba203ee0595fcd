package telemetry

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// benchMsg is a typical message: every field of the contract, about 200 bytes.
var benchMsg = []byte(`{"time":"2026-02-05T10:00:00.123Z","vendor":"mailer","credential":"mailer-api","dst":"203.0.113.7","dst_port":443,"bytes":18231,"records":20,"src":"10.0.3.17","protocol":"https","sensor":"egress-gw-1"}`)

// corpusEvent returns a realistic event: 20 vendors with 3 credentials each, 500
// destinations, 4 sensors, time moving forward.
func corpusEvent(r *rand.Rand, i int) Event {
	v := r.IntN(20)
	return Event{
		Time:       time.Date(2026, 2, 5, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 37 * time.Millisecond),
		Vendor:     fmt.Sprintf("vendor-%02d", v),
		Credential: fmt.Sprintf("vendor-%02d-key-%d", v, r.IntN(3)),
		Dst:        fmt.Sprintf("203.0.%d.%d", r.IntN(2)+113, r.IntN(250)),
		DstPort:    443,
		Bytes:      r.Int64N(1 << 20),
		Records:    r.Int64N(100),
		Src:        fmt.Sprintf("10.0.%d.%d", r.IntN(4), r.IntN(250)),
		Protocol:   "https",
		Sensor:     fmt.Sprintf("egress-gw-%d", r.IntN(4)),
	}
}

func corpus(n int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([][]byte, n)
	for i := range out {
		e := corpusEvent(r, i)
		out[i] = AppendJSON(nil, &e)
	}
	return out
}

func BenchmarkDecodeJSON(b *testing.B) {
	b.Run("typical", func(b *testing.B) {
		d := NewJSONDecoder(DecodeOptions{})
		var e Event
		b.SetBytes(int64(len(benchMsg)))
		b.ReportAllocs()
		cpu := startThreadCPU()
		n := 0
		for b.Loop() {
			if err := d.Decode(benchMsg, &e); err != nil {
				b.Fatal(err)
			}
			n++
		}
		cpu.report(b, n)
	})
	b.Run("corpus", func(b *testing.B) {
		msgs := corpus(4096)
		var size int
		for _, m := range msgs {
			size += len(m)
		}
		d := NewJSONDecoder(DecodeOptions{})
		var e Event
		b.SetBytes(int64(size / len(msgs)))
		b.ReportAllocs()
		cpu := startThreadCPU()
		n := 0
		for b.Loop() {
			if err := d.Decode(msgs[n&4095], &e); err != nil {
				b.Fatal(err)
			}
			n++
		}
		cpu.report(b, n)
	})
}

func BenchmarkDecodeVPC(b *testing.B) {
	rec := []byte("2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.7 20641 443 6 20 4249 1418530010 1418530070 ACCEPT OK")
	d := NewVPCFlowDecoder(testAttributor(b), DecodeOptions{})
	var e Event
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	cpu := startThreadCPU()
	n := 0
	for b.Loop() {
		if err := d.Decode(rec, &e); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cpu.report(b, n)
}

func BenchmarkDecodeOCSF(b *testing.B) {
	msg := []byte(ocsfExample)
	d := NewOCSFDecoder(testAttributor(b), DecodeOptions{})
	var e Event
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(msg, &e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := corpusEvent(rand.New(rand.NewPCG(1, 2)), 12345) // a realistic event, every field set
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendJSON(buf[:0], &e)
	}
	b.SetBytes(int64(len(buf)))
}

// writeCorpusFile writes n corpus events as NDJSON (gzip-compressed if gz).
func writeCorpusFile(b *testing.B, n int, gz bool) (string, int64) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "events.ndjson")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	var w *bufio.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = bufio.NewWriterSize(zw, 1<<20)
	} else {
		w = bufio.NewWriterSize(f, 1<<20)
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 0, 512)
	var size int64
	for i := range n {
		e := corpusEvent(r, i)
		buf = append(AppendJSON(buf[:0], &e), '\n')
		size += int64(len(buf))
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path, size
}

// BenchmarkNDJSONFile reads a file of 500k realistic events (about 100 MB) with a
// handler that only counts, and reports events/s.
func BenchmarkNDJSONFile(b *testing.B) {
	const n = 500_000
	for _, gz := range []bool{false, true} {
		name := "plain"
		if gz {
			name = "gzip"
		}
		b.Run(name, func(b *testing.B) {
			path, size := writeCorpusFile(b, n, gz)
			var events atomic.Int64
			h := HandlerFunc(func(_ context.Context, batch []Event) error {
				events.Add(int64(len(batch)))
				return nil
			})
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				st, err := ReadFile(context.Background(), path, h, FileOptions{})
				if err != nil || st.Events != n {
					b.Fatalf("%+v %v", st, err)
				}
			}
			b.ReportMetric(float64(events.Load())/time.Since(start).Seconds(), "events/s")
		})
	}
}
