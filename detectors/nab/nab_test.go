package nab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
)

// synthetic returns a NAB-style CSV of n rows every 5 minutes: a daily cycle with a
// level shift at row shiftAt, plus a repeated and a backward timestamp.
func synthetic(n, shiftAt int) string {
	var b strings.Builder
	b.WriteString("timestamp,value\n")
	t := time.Date(2014, 4, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		v := 50 + 10*math.Sin(float64(i)/288*2*math.Pi) + float64(i%7)*0.3
		if i >= shiftAt {
			v += 40
		}
		ts := t.Add(time.Duration(i) * 5 * time.Minute)
		switch i {
		case 100:
			ts = t.Add(99 * 5 * time.Minute) // repeated
		case 200:
			ts = t.Add(150 * 5 * time.Minute) // backwards
		}
		fmt.Fprintf(&b, "%s,%s\n", ts.Format("2006-01-02 15:04:05"), strconv.FormatFloat(v, 'f', -1, 64))
	}
	return b.String()
}

func score(t *testing.T, in string) (string, Stats) {
	t.Helper()
	var out bytes.Buffer
	st, err := ScoreCSV(strings.NewReader(in), &out, detectors.DefaultModelParams())
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), st
}

func TestScoreCSVFormat(t *testing.T) {
	in := synthetic(1500, 1200)
	out, st := score(t, in)
	inLines := strings.Split(strings.TrimSpace(in), "\n")
	outLines := strings.Split(strings.TrimSpace(out), "\n")
	if outLines[0] != "timestamp,value,anomaly_score" {
		t.Fatalf("header %q", outLines[0])
	}
	if len(outLines) != len(inLines) || st.Rows != len(inLines)-1 {
		t.Fatalf("%d output lines, %d rows for %d input lines", len(outLines), st.Rows, len(inLines))
	}
	fired := 0
	for i := 1; i < len(outLines); i++ {
		f := strings.Split(outLines[i], ",")
		if len(f) != 3 || !strings.HasPrefix(outLines[i], inLines[i]+",") {
			t.Fatalf("line %d %q does not copy the input %q", i, outLines[i], inLines[i])
		}
		s, err := strconv.ParseFloat(f[2], 64)
		if err != nil || s < 0 || s > 1 {
			t.Fatalf("line %d: score %q", i, f[2])
		}
		if s >= 0.5 {
			fired++
			if i-1 < 1200 {
				t.Errorf("fired at row %d, before the shift", i-1)
			}
		}
	}
	if fired != 1 || st.Detections != 1 {
		t.Fatalf("fired %d times (stats %d), want once at the level shift", fired, st.Detections)
	}
}

// TestScoreCSVPastOnly: appending future rows must not change any earlier score.
func TestScoreCSVPastOnly(t *testing.T) {
	full := synthetic(1500, 1200)
	lines := strings.SplitAfter(full, "\n")
	prefix := strings.Join(lines[:801], "") // header + 800 rows
	a, _ := score(t, prefix)
	b, _ := score(t, full)
	if !strings.HasPrefix(b, a) {
		t.Fatal("scores of the first 800 rows changed when later rows were appended")
	}
}

func TestScoreCSVErrors(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"no value":       "timestamp,score\n2014-01-01 00:00:00,1\n",
		"bad time":       "timestamp,value\nyesterday,1\n",
		"bad value":      "timestamp,value\n2014-01-01 00:00:00,abc\n",
		"infinite value": "timestamp,value\n2014-01-01 00:00:00,+Inf\n",
		"short row":      "value,timestamp\n1\n",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ScoreCSV(strings.NewReader(in), new(bytes.Buffer), detectors.DefaultModelParams())
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("got %v, want an error wrapping ErrFormat", err)
			}
		})
	}
	// blank lines and CRLF are fine
	out, st := score(t, "timestamp,value\r\n2014-01-01 00:00:00,1\r\n\r\n2014-01-01 00:05:00,2\r\n")
	if st.Rows != 2 || !strings.Contains(out, "2014-01-01 00:05:00,2,") {
		t.Fatalf("rows %d out %q", st.Rows, out)
	}
}

func TestRun(t *testing.T) {
	data := t.TempDir()
	for _, cat := range []string{"realA", "artificialB"} {
		if err := os.MkdirAll(filepath.Join(data, cat), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, cat, "s.csv"), []byte(synthetic(400, 300)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	res, err := Run(context.Background(), data, out, detectors.DefaultModelParams())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Category != "artificialB" || res[0].Rows != 400 {
		t.Fatalf("results %+v", res)
	}
	for _, r := range res {
		want := filepath.Join(out, "killswitch", r.Category, "killswitch_s.csv")
		if r.Out != want {
			t.Errorf("out %s, want %s", r.Out, want)
		}
		if _, err := os.Stat(want); err != nil {
			t.Error(err)
		}
	}
	if _, err := Run(context.Background(), t.TempDir(), out, detectors.DefaultModelParams()); !errors.Is(err, ErrFormat) {
		t.Fatalf("an empty data directory: %v", err)
	}
	bad := t.TempDir()
	os.MkdirAll(filepath.Join(bad, "c"), 0o755)
	os.WriteFile(filepath.Join(bad, "c", "x.csv"), []byte("timestamp,value\nnope,1\n"), 0o644)
	if _, err := Run(context.Background(), bad, out, detectors.DefaultModelParams()); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "x.csv") {
		t.Fatalf("a bad file: %v", err)
	}
}

// FuzzScoreCSV: any input gives either an error wrapping ErrFormat or one output row
// per input row, never a panic.
func FuzzScoreCSV(f *testing.F) {
	f.Add(synthetic(300, 200))
	f.Add("timestamp,value\n2014-01-01 00:00:00,1\n")
	f.Add("value,timestamp\n1e308,2014-01-01T00:00:00Z\n-1e308,2014-01-01T00:00:00Z\n")
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		st, err := ScoreCSV(strings.NewReader(in), &out, detectors.DefaultModelParams())
		if err != nil {
			return
		}
		if got := strings.Count(out.String(), "\n") - 1; got != st.Rows {
			t.Fatalf("%d output rows for %d scored", got, st.Rows)
		}
	})
}
