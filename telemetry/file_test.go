package telemetry_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/killswitch-dev/killswitch/telemetry/telemetrytest"
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

func line(i int) string { e := telemetrytest.Event(i); return string(telemetry.AppendJSON(nil, &e)) }

type badLine struct {
	pos    string
	reason telemetry.Reason
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
	want := []badLine{{"in:4", telemetry.ReasonNegativeBytes}, {"in:5", telemetry.ReasonInvalidJSON}, {"in:8", telemetry.ReasonMissingVendor}}
	for _, tc := range []struct {
		name string
		data []byte
	}{{"plain", input}, {"gzip", gz(t, input)}, {"concatenated gzip members", append(gz(t, input[:bytes.IndexByte(input, '\n')+1]), gz(t, input[bytes.IndexByte(input, '\n')+1:])...)}} {
		t.Run(tc.name, func(t *testing.T) {
			var bad []badLine
			c := telemetrytest.NewCollector()
			counters := telemetry.NewCounters()
			st, err := telemetry.Read(context.Background(), "in", bytes.NewReader(tc.data), c, telemetry.FileOptions{
				BatchSize: 2, Counters: counters, Logger: zaptest.NewLogger(t),
				OnBadLine: func(p telemetry.Position, err error) { bad = append(bad, badLine{p.String(), telemetry.ReasonOf(err)}) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if st != (telemetry.FileStats{Lines: 9, Events: 4, Rejected: 3, Skipped: 2}) {
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
				if c.Count(int64(i)) != 1 {
					t.Fatalf("event %d delivered %d times", i, c.Count(int64(i)))
				}
			}
			snap := counters.Snapshot()
			if snap.Received != 9 || snap.Delivered != 4 || snap.TotalRejected() != 3 || snap.Skipped[telemetry.ReasonEmpty] != 2 {
				t.Fatalf("counters %+v", snap)
			}
		})
	}
}

func TestReadNDJSONOversizeLine(t *testing.T) {
	huge := `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1,"pad":"` + strings.Repeat("x", 300) + `"}`
	input := ndjson(line(0), huge, line(1), strings.Repeat("y", 1000), line(2))
	var bad []badLine
	c := telemetrytest.NewCollector()
	st, err := telemetry.Read(context.Background(), "f", bytes.NewReader(input), c, telemetry.FileOptions{
		Decode:     telemetry.DecodeOptions{MaxMessageSize: 200},
		BufferSize: 16, // raised to the message bound
		OnBadLine:  func(p telemetry.Position, err error) { bad = append(bad, badLine{p.String(), telemetry.ReasonOf(err)}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != 3 || st.Rejected != 2 || len(bad) != 2 || bad[0] != (badLine{"f:2", telemetry.ReasonOversize}) || bad[1] != (badLine{"f:4", telemetry.ReasonOversize}) {
		t.Fatalf("stats %+v, bad %v", st, bad)
	}
}

func TestReadNDJSONStrict(t *testing.T) {
	input := ndjson(line(0), line(1), "oops", line(2))
	c := telemetrytest.NewCollector()
	st, err := telemetry.Read(context.Background(), "f", bytes.NewReader(input), c, telemetry.FileOptions{Strict: true, BatchSize: 1})
	var le *telemetry.LineError
	if !errors.As(err, &le) || le.Pos.Line != 3 || telemetry.ReasonOf(err) != telemetry.ReasonInvalidJSON || !errors.Is(err, telemetry.ErrInvalid) {
		t.Fatalf("got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "f:3: ") {
		t.Fatalf("error %q does not start with the position", err)
	}
	if st.Events != 2 || c.Count(2) != 0 {
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
		c := telemetrytest.NewCollector()
		c.Fail = func(_ int, batch []telemetry.Event) error {
			for i, e := range batch {
				if e.Bytes == 6 {
					return &telemetry.PartialError{Handled: i, Err: errors.New("disk full")}
				}
			}
			return nil
		}
		st, err := telemetry.Read(context.Background(), "f", bytes.NewReader(input), c, telemetry.FileOptions{BatchSize: 4})
		var le *telemetry.LineError
		if !errors.As(err, &le) || le.Pos.Line != 7 || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("got %v", err)
		}
		if st.Events != 6 || c.Distinct() != 6 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("poison event is reported and skipped", func(t *testing.T) {
		c := telemetrytest.NewCollector()
		c.Fail = func(_ int, batch []telemetry.Event) error {
			for i, e := range batch {
				if e.Bytes == 6 {
					return &telemetry.PartialError{Handled: i, Err: killswitch.Permanent(killswitch.ReasonInvalid, errors.New("cannot process"))}
				}
			}
			return nil
		}
		var bad []badLine
		st, err := telemetry.Read(context.Background(), "f", bytes.NewReader(input), c, telemetry.FileOptions{
			BatchSize: 4, OnBadLine: func(p telemetry.Position, err error) { bad = append(bad, badLine{p.String(), telemetry.ReasonOf(err)}) },
		})
		if err != nil {
			t.Fatal(err)
		}
		if st.Events != 9 || st.Rejected != 1 || c.Count(6) != 0 || c.Distinct() != 9 || len(bad) != 1 || bad[0].pos != "f:7" {
			t.Fatalf("stats %+v bad %v", st, bad)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := telemetry.Read(ctx, "f", bytes.NewReader(input), telemetrytest.NewCollector(), telemetry.FileOptions{})
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
	c := telemetrytest.NewCollector()
	src := telemetry.NewFileSource(telemetry.FileOptions{}, a, b)
	if err := src.Run(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if st := src.Stats(); st.Events != 3 || st.Rejected != 1 || c.Distinct() != 3 {
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
	attr, err := telemetry.NewAttributor(killswitch.Inventory{"mailer": {CIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	counters := telemetry.NewCounters()
	c = telemetrytest.NewCollector()
	st, err := telemetry.ReadFile(context.Background(), vpc, c, telemetry.FileOptions{
		Counters: counters, NewDecoder: func() telemetry.Decoder { return telemetry.NewVPCFlowDecoder(attr, telemetry.DecodeOptions{}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st != (telemetry.FileStats{Lines: 4, Events: 1, Skipped: 3}) || c.Count(1234) != 1 {
		t.Fatalf("stats %+v", st)
	}
	if snap := counters.Snapshot(); snap.Skipped[telemetry.ReasonHeader] != 1 || snap.Skipped[telemetry.ReasonUnattributed] != 1 || snap.Skipped[telemetry.ReasonNoData] != 1 {
		t.Fatalf("skips %+v", snap.Skipped)
	}

	// Corrupt gzip is an error, not silence.
	bad := filepath.Join(dir, "bad.gz")
	data := gz(t, ndjson(line(0), line(1)))
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := telemetry.ReadFile(context.Background(), bad, telemetrytest.NewCollector(), telemetry.FileOptions{}); err == nil {
		t.Fatal("corrupt gzip read without error")
	}
	if _, err := telemetry.ReadFile(context.Background(), filepath.Join(dir, "missing"), telemetrytest.NewCollector(), telemetry.FileOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzNDJSON(f *testing.F) {
	f.Add([]byte(line(0) + "\n" + line(1) + "\r\n\nbad\n" + line(2)))
	f.Add([]byte("\n\n\r\n"))
	f.Add([]byte(`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1}` + "\r\r\n" + strings.Repeat("z", 150)))
	const maxMsg = 100
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []telemetry.Event
		h := telemetry.HandlerFunc(func(_ context.Context, batch []telemetry.Event) error {
			got = append(got, batch...)
			return nil
		})
		var badLines []int64
		st, err := telemetry.Read(context.Background(), "fuzz", bytes.NewReader(data), h, telemetry.FileOptions{
			Decode: telemetry.DecodeOptions{MaxMessageSize: maxMsg}, BatchSize: 3, BufferSize: 1,
			OnBadLine: func(p telemetry.Position, _ error) { badLines = append(badLines, p.Line) },
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
		dec := telemetry.NewJSONDecoder(telemetry.DecodeOptions{MaxMessageSize: maxMsg})
		var want []telemetry.Event
		var wantBad []int64
		var skipped int64
		for i, l := range raw {
			if len(l)+1 > bufSize {
				wantBad = append(wantBad, int64(i+1))
				continue
			}
			var e telemetry.Event
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
