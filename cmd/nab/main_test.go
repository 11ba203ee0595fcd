package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeCSV writes a tiny NAB-style file: a flat noisy series with one spike.
func writeCSV(t *testing.T, path string, rows int, spikeAt int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("timestamp,value\n")
	t0 := time.Date(2015, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := range rows {
		v := 10 + float64(i%5)*0.1
		if i == spikeAt {
			v = 100
		}
		fmt.Fprintf(&b, "%s,%g\n", t0.Add(time.Duration(i)*5*time.Minute).Format("2006-01-02 15:04:05"), v)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readScores(t *testing.T, path string) (header []string, rows [][]string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	all, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return all[0], all[1:]
}

func TestRun(t *testing.T) {
	data, out := t.TempDir(), t.TempDir()
	writeCSV(t, filepath.Join(data, "synthetic", "tiny.csv"), 300, 250)
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"-data", data, "-out", out}, &stdout); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "1 files, 300 rows, 1 detections") {
		t.Fatalf("stdout %q", stdout.String())
	}
	res := filepath.Join(out, "killswitch", "synthetic", "killswitch_tiny.csv")
	header, rows := readScores(t, res)
	if strings.Join(header, ",") != "timestamp,value,anomaly_score" || len(rows) != 300 {
		t.Fatalf("header %v, %d rows", header, len(rows))
	}
	for i, r := range rows {
		s, _ := strconv.ParseFloat(r[2], 64)
		if (s >= 0.5) != (i == 250) {
			t.Errorf("row %d scored %g", i, s)
		}
	}

	// past only: more rows after the end change no earlier score
	writeCSV(t, filepath.Join(data, "synthetic", "tiny.csv"), 400, 250)
	if err := run(context.Background(), []string{"-data", data, "-out", out}, &stdout); err != nil {
		t.Fatal(err)
	}
	_, longer := readScores(t, res)
	for i := range rows {
		if strings.Join(rows[i], ",") != strings.Join(longer[i], ",") {
			t.Fatalf("row %d changed from %v to %v when rows were appended", i, rows[i], longer[i])
		}
	}

	if err := run(context.Background(), nil, &stdout); !errors.Is(err, errUsage) {
		t.Fatalf("no -data: %v", err)
	}
}
