// Package nab runs the Killswitch volume model over the Numenta Anomaly Benchmark
// (NAB v1.1) corpus and writes NAB result files.
//
// Each data file is read as a stream, one row at a time: a row's score is computed
// from the rows before it and the row itself only, then the row is learned. Each file
// gets a fresh model; the labels are never read. A score ≥ 0.5 means the detector
// fires (the threshold is fixed in advance); the scores are those of
// detectors.SeriesScorer, the spike and sustained detectors' per-observation scorer.
package nab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
)

// Detector is the detector name used in result paths and file names.
const Detector = "killswitch"

// ErrFormat is wrapped by every error about malformed input.
var ErrFormat = errors.New("nab: malformed input")

// timeLayouts are the timestamp layouts accepted, tried in order.
var timeLayouts = []string{
	"2006-01-02 15:04:05",
	"2006-01-02 15:04:05.999999999",
	time.RFC3339Nano,
	"2006-01-02T15:04:05",
}

func parseTime(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: timestamp %q is not \"YYYY-MM-DD hh:mm:ss\" or RFC 3339", ErrFormat, s)
}

// Stats counts what ScoreCSV scored.
type Stats struct {
	// Rows is the number of data rows.
	Rows int
	// Detections is the number of rows that scored ≥ 0.5 (the detector fired).
	Detections int
}

// ScoreCSV reads a NAB data file (header "timestamp,value") from r and writes the
// result file (header "timestamp,value,anomaly_score", one row per input row, the
// timestamp and value copied exactly) to w. Each row is scored before the next one is
// read. Timestamps may repeat or go backwards: a row is one observation whatever its
// timestamp says. Blank lines are skipped; any other malformed row is an error
// wrapping ErrFormat that names the line.
func ScoreCSV(r io.Reader, w io.Writer, p detectors.ModelParams) (Stats, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	bw := bufio.NewWriter(w)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return Stats{}, fmt.Errorf("nab: read header: %w", err)
		}
		return Stats{}, fmt.Errorf("%w: empty file, want a header \"timestamp,value\"", ErrFormat)
	}
	header := strings.Split(strings.TrimSpace(strings.TrimPrefix(sc.Text(), "\ufeff")), ",")
	tc, vc := -1, -1
	for i, h := range header {
		switch strings.TrimSpace(h) {
		case "timestamp":
			tc = i
		case "value":
			vc = i
		}
	}
	if tc < 0 || vc < 0 {
		return Stats{}, fmt.Errorf("%w: header %q lacks a timestamp or value column", ErrFormat, sc.Text())
	}
	if _, err := bw.WriteString("timestamp,value,anomaly_score\n"); err != nil {
		return Stats{}, fmt.Errorf("nab: write: %w", err)
	}
	scorer := detectors.NewSeriesScorer(p)
	var st Stats
	line := 1
	var buf []byte
	for sc.Scan() {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fields := strings.Split(text, ",")
		if len(fields) <= tc || len(fields) <= vc {
			return st, fmt.Errorf("%w: line %d: %d fields, want at least %d", ErrFormat, line, len(fields), max(tc, vc)+1)
		}
		ts, vs := strings.TrimSpace(fields[tc]), strings.TrimSpace(fields[vc])
		t, err := parseTime(ts)
		if err != nil {
			return st, fmt.Errorf("line %d: %w", line, err)
		}
		v, err := strconv.ParseFloat(vs, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return st, fmt.Errorf("%w: line %d: value %q is not a finite number", ErrFormat, line, vs)
		}
		s := scorer.Observe(t, v)
		if s >= 0.5 {
			st.Detections++
		}
		buf = buf[:0]
		buf = append(buf, ts...)
		buf = append(buf, ',')
		buf = append(buf, vs...)
		buf = append(buf, ',')
		buf = strconv.AppendFloat(buf, s, 'f', 6, 64)
		buf = append(buf, '\n')
		if _, err := bw.Write(buf); err != nil {
			return st, fmt.Errorf("nab: write: %w", err)
		}
		st.Rows++
	}
	if err := sc.Err(); err != nil {
		return st, fmt.Errorf("nab: read line %d: %w", line+1, err)
	}
	if err := bw.Flush(); err != nil {
		return st, fmt.Errorf("nab: write: %w", err)
	}
	return st, nil
}

// FileResult reports one scored file.
type FileResult struct {
	// Category and File name the data file (data/<Category>/<File>).
	Category, File string
	// Rows is the number of rows scored.
	Rows int
	// Detections is the number of rows that scored ≥ 0.5.
	Detections int
	// Out is the path of the result file.
	Out string
}

// Run scores every data/<category>/<file>.csv under dataDir, in lexical order, and
// writes outDir/killswitch/<category>/killswitch_<file>.csv for each.
func Run(ctx context.Context, dataDir, outDir string, p detectors.ModelParams) ([]FileResult, error) {
	files, err := filepath.Glob(filepath.Join(dataDir, "*", "*.csv"))
	if err != nil {
		return nil, fmt.Errorf("nab: list %s: %w", dataDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no <category>/<file>.csv under %s", ErrFormat, dataDir)
	}
	sort.Strings(files)
	var out []FileResult
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		cat, name := filepath.Base(filepath.Dir(f)), filepath.Base(f)
		dst := filepath.Join(outDir, Detector, cat, Detector+"_"+name)
		res, err := scoreFile(f, dst, p)
		if err != nil {
			return out, err
		}
		res.Category, res.File = cat, name
		out = append(out, res)
	}
	return out, nil
}

func scoreFile(src, dst string, p detectors.ModelParams) (FileResult, error) {
	in, err := os.Open(src)
	if err != nil {
		return FileResult{}, fmt.Errorf("nab: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return FileResult{}, fmt.Errorf("nab: %w", err)
	}
	tmp := dst + ".tmp"
	o, err := os.Create(tmp)
	if err != nil {
		return FileResult{}, fmt.Errorf("nab: %w", err)
	}
	st, err := ScoreCSV(in, o, p)
	if cerr := o.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("nab: %w", cerr)
	}
	if err != nil {
		os.Remove(tmp)
		return FileResult{}, fmt.Errorf("%s: %w", src, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return FileResult{}, fmt.Errorf("nab: %w", err)
	}
	return FileResult{Rows: st.Rows, Detections: st.Detections, Out: dst}, nil
}
