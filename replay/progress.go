package replay

import (
	"fmt"
	"io"
	"time"
)

// progress draws a one-line progress bar with the event rate on a terminal.
type progress struct {
	w     io.Writer
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer) *progress {
	now := time.Now()
	return &progress{w: w, start: now, last: now}
}

// update redraws the line at most four times a second (progress reads the wall clock:
// it is display only, never part of the report).
func (p *progress) update(events int64, at time.Time, incidents int) {
	now := time.Now()
	if now.Sub(p.last) < 250*time.Millisecond {
		return
	}
	p.last = now
	rate := float64(events) / now.Sub(p.start).Seconds()
	fmt.Fprintf(p.w, "\r\x1b[K  %s events  %s/s  at %s  %d incidents",
		human(float64(events)), human(rate), at.UTC().Format("2006-01-02 15:04"), incidents)
}

func (p *progress) done(events int64, incidents int) {
	el := time.Since(p.start)
	fmt.Fprintf(p.w, "\r\x1b[K  %s events in %s (%s/s), %d incidents\n",
		human(float64(events)), el.Round(time.Millisecond), human(float64(events)/el.Seconds()), incidents)
}

func human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
