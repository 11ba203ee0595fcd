package telemetry

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch"
	"github.com/klauspost/compress/gzip"
	"go.uber.org/zap/zaptest"
)

func ndjson(lines ...string) []byte { return []byte(strings.Join(lines, "\n")) }

func gz(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func line(i int) string { e := testEvent(i); return string(AppendJSON(nil, &e)) }

type badLine struct {
	pos    string
	reason Reason
}

func TestReadNDJSON(t *testing.T) {
	input := ndjson(
		line(0),
		line(1)+"\r", // CRLF
		"",           // blank
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":-1}`,
		"not json",
		"   ",
		line(2),
		`{"time":"2026-02-05T10:00:00Z","bytes":1}`,
		line(3), // no final newline
	)
	want := []badLine{{"in:4", ReasonNegativeBytes}, {"in:5", ReasonInvalidJSON}, {"in:8", ReasonMissingVendor}}
	for _, tc := range []struct {
		name string
		data []byte
	}{{"plain", input}, {"gzip", gz(t, input)}, {"concatenated gzip members", append(gz(t, input[:bytes.IndexByte(input, '\n')+1]), gz(t, input[bytes.IndexByte(input, '\n')+1:])...)}} {
		t.Run(tc.name, func(t *testing.T) {
			var bad []badLine
			c := newCollector()
			counters := NewCounters()
			st, err := Read(context.Background(), "in", bytes.NewReader(tc.data), c, FileOptions{
				BatchSize: 2, Counters: counters, Logger: zaptest.NewLogger(t),
				OnBadLine: func(p Position, err error) { bad = append(bad, badLine{p.String(), ReasonOf(err)}) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if st != (FileStats{Lines: 9, Events: 4, Rejected: 3, Skipped: 2}) {
				t.Fatalf("stats %+v", st)
			}
			if len(bad) != len(want) {
				t.Fatalf("bad lines %v, want %v", bad, want)
			}
			for i := range want {
				if bad[i] != want[i] {
					t.Fatalf("bad lines %v, want %v", bad, want)
				}
			}
			for i := range 4 {
				if c.count(int64(i)) != 1 {
					t.Fatalf("event %d delivered %d times", i, c.count(int64(i)))
				}
			}
			snap := counters.Snapshot()
			if snap.Received != 9 || snap.Delivered != 4 || snap.TotalRejected() != 3 || snap.Skipped[ReasonEmpty] != 2 {
				t.Fatalf("counters %+v", snap)
			}
		})
	}
}

func TestReadNDJSONOversizeLine(t *testing.T) {
	huge := `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1,"pad":"` + strings.Repeat("x", 300) + `"}`
	input := ndjson(line(0), huge, line(1), strings.Repeat("y", 1000), line(2))
	var bad []badLine
	c := newCollector()
	st, err := Read(context.Background(), "f", bytes.NewReader(input), c, FileOptions{
		Decode:     DecodeOptions{MaxMessageSize: 200},
		BufferSize: 16, // raised to the message bound
		OnBadLine:  func(p Position, err error) { bad = append(bad, badLine{p.String(), ReasonOf(err)}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != 3 || st.Rejected != 2 || len(bad) != 2 || bad[0] != (badLine{"f:2", ReasonOversize}) || bad[1] != (badLine{"f:4", ReasonOversize}) {
		t.Fatalf("stats %+v, bad %v", st, bad)
	}
}

func TestReadNDJSONStrict(t *testing.T) {
	input := ndjson(line(0), line(1), "oops", line(2))
	c := newCollector()
	st, err := Read(context.Background(), "f", bytes.NewReader(input), c, FileOptions{Strict: true, BatchSize: 1})
	var le *LineError
	if !errors.As(err, &le) || le.Pos.Line != 3 || ReasonOf(err) != ReasonInvalidJSON || !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "f:3: ") {
		t.Fatalf("error %q does not start with the position", err)
	}
	if st.Events != 2 || c.count(2) != 0 {
		t.Fatalf("events before the bad line must be delivered, none after: %+v", st)
	}
}

func TestReadNDJSONHandlerErrors(t *testing.T) {
	var lines []string
	for i := range 10 {
		lines = append(lines, line(i))
	}
	input := ndjson(lines...)
	t.Run("retryable error stops at the first unhandled line", func(t *testing.T) {
		c := newCollector()
		c.fail = func(_ int, batch []Event) error {
			for i, e := range batch {
				if e.Bytes == 6 {
					return &PartialError{Handled: i, Err: errors.New("disk full")}
				}
			}
			return nil
		}
		st, err := Read(context.Background(), "f", bytes.NewReader(input), c, FileOptions{BatchSize: 4})
		var le *LineError
		if !errors.As(err, &le) || le.Pos.Line != 7 || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("got %v", err)
		}
		if st.Events != 6 || c.distinct() != 6 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("poison event is reported and skipped", func(t *testing.T) {
		c := newCollector()
		c.fail = func(_ int, batch []Event) error {
			for i, e := range batch {
				if e.Bytes == 6 {
					return &PartialError{Handled: i, Err: killswitch.Permanent(killswitch.ReasonInvalid, errors.New("cannot process"))}
				}
			}
			return nil
		}
		var bad []badLine
		st, err := Read(context.Background(), "f", bytes.NewReader(input), c, FileOptions{
			BatchSize: 4, OnBadLine: func(p Position, err error) { bad = append(bad, badLine{p.String(), ReasonOf(err)}) },
		})
		if err != nil {
			t.Fatal(err)
		}
		if st.Events != 9 || st.Rejected != 1 || c.count(6) != 0 || c.distinct() != 9 || len(bad) != 1 || bad[0].pos != "f:7" {
			t.Fatalf("stats %+v bad %v", st, bad)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Read(ctx, "f", bytes.NewReader(input), newCollector(), FileOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestReadFileFormatsAndSource(t *testing.T) {
	dir := t.TempDir()
	// Gzip detected by content: a compressed file named .ndjson and a plain one named .gz.
	a := filepath.Join(dir, "a.ndjson")
	b := filepath.Join(dir, "b.gz")
	if err := os.WriteFile(a, gz(t, ndjson(line(0), line(1))), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, ndjson(line(2), "bad"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	src := NewFileSource(FileOptions{}, a, b)
	if err := src.Run(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if st := src.Stats(); st.Events != 3 || st.Rejected != 1 || c.distinct() != 3 {
		t.Fatalf("stats %+v", st)
	}

	// Flow logs through the same reader.
	vpc := filepath.Join(dir, "flows.log.gz")
	flows := "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n" +
		"2 1 eni-1 10.0.0.1 203.0.113.7 5000 443 6 10 1234 1700000000 1700000060 ACCEPT OK\n" +
		"2 1 eni-1 10.0.0.1 10.0.0.9 5000 443 6 10 99 1700000000 1700000060 ACCEPT OK\n" +
		"2 1 eni-1 - - - - - - - 1700000000 1700000060 - NODATA\n"
	if err := os.WriteFile(vpc, gz(t, []byte(flows)), 0o600); err != nil {
		t.Fatal(err)
	}
	attr := testAttributor(t)
	counters := NewCounters()
	c = newCollector()
	st, err := ReadFile(context.Background(), vpc, c, FileOptions{
		Counters: counters, NewDecoder: func() Decoder { return NewVPCFlowDecoder(attr, DecodeOptions{}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st != (FileStats{Lines: 4, Events: 1, Skipped: 3}) || c.count(1234) != 1 {
		t.Fatalf("stats %+v", st)
	}
	if snap := counters.Snapshot(); snap.Skipped[ReasonHeader] != 1 || snap.Skipped[ReasonUnattributed] != 1 || snap.Skipped[ReasonNoData] != 1 {
		t.Fatalf("skips %+v", snap.Skipped)
	}

	// Corrupt gzip is an error, not silence.
	bad := filepath.Join(dir, "bad.gz")
	data := gz(t, ndjson(line(0), line(1)))
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(context.Background(), bad, newCollector(), FileOptions{}); err == nil {
		t.Fatal("corrupt gzip read without error")
	}
	if _, err := ReadFile(context.Background(), filepath.Join(dir, "missing"), newCollector(), FileOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzNDJSON(f *testing.F) {
	f.Add([]byte(line(0) + "\n" + line(1) + "\r\n\nbad\n" + line(2)))
	f.Add([]byte("\n\n\r\n"))
	f.Add([]byte(`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1}` + "\r\r\n" + strings.Repeat("z", 150)))
	const maxMsg = 100
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []Event
		h := HandlerFunc(func(_ context.Context, batch []Event) error {
			got = append(got, batch...)
			return nil
		})
		var badLines []int64
		st, err := Read(context.Background(), "fuzz", bytes.NewReader(data), h, FileOptions{
			Decode: DecodeOptions{MaxMessageSize: maxMsg}, BatchSize: 3, BufferSize: 1,
			OnBadLine: func(p Position, _ error) { badLines = append(badLines, p.Line) },
		})
		if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
			return // a gzip stream: only absence of panics is checked
		}
		if err != nil {
			t.Fatalf("plain input: %v", err)
		}
		// Reference: split into lines, decode each on its own.
		const bufSize = maxMsg + 2
		raw := bytes.Split(data, []byte("\n"))
		if len(raw[len(raw)-1]) == 0 {
			raw = raw[:len(raw)-1]
		}
		dec := NewJSONDecoder(DecodeOptions{MaxMessageSize: maxMsg})
		var want []Event
		var wantBad []int64
		var skipped int64
		for i, l := range raw {
			if len(l)+1 > bufSize {
				wantBad = append(wantBad, int64(i+1))
				continue
			}
			var e Event
			l = bytes.TrimRight(l, "\r\n")
			switch derr := dec.Decode(l, &e); {
			case derr == nil:
				want = append(want, e)
			case len(bytes.TrimSpace(l)) == 0:
				skipped++
			default:
				wantBad = append(wantBad, int64(i+1))
			}
		}
		if st.Lines != int64(len(raw)) || st.Events != int64(len(want)) || st.Skipped != skipped || st.Rejected != int64(len(wantBad)) {
			t.Fatalf("stats %+v; want lines %d events %d skipped %d rejected %d", st, len(raw), len(want), skipped, len(wantBad))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("event %d: got %+v want %+v", i, got[i], want[i])
			}
		}
		for i := range wantBad {
			if badLines[i] != wantBad[i] {
				t.Fatalf("bad lines %v, want %v", badLines, wantBad)
			}
		}
	})
}
