package clock

import (
	"context"
	"time"
)

// Pacer paces a stream of event times against a clock: at speed N, an event that
// happened d after the first one is released d/N after the first was released. Replay
// (--speed) and the telemetry generator use it for live exercises.
//
// A Pacer releases events at Speed times real time. Speed ≤ 0 means as fast as possible.
// It is not safe for concurrent use.
type Pacer struct {
	speed  float64
	clock  Clock
	sleep  func(ctx context.Context, d time.Duration) error
	origin time.Time // event time of the first event
	wall   time.Time // clock time it was released
}

// NewPacer returns a Pacer on the real clock.
func NewPacer(speed float64) *Pacer { return NewPacerWithClock(speed, Real{}, Sleep) }

// NewPacerWithClock returns a Pacer using c to read the time and sleep to wait.
func NewPacerWithClock(speed float64, c Clock, sleep func(context.Context, time.Duration) error) *Pacer {
	return &Pacer{speed: speed, clock: c, sleep: sleep}
}

// Wait blocks until the event at eventTime is due, or ctx is done. Events earlier than
// the first are due at once.
func (p *Pacer) Wait(ctx context.Context, eventTime time.Time) error {
	if p.speed <= 0 {
		return ctx.Err()
	}
	if p.wall.IsZero() {
		p.origin, p.wall = eventTime, p.clock.Now()
		return ctx.Err()
	}
	due := p.wall.Add(time.Duration(float64(eventTime.Sub(p.origin)) / p.speed))
	if d := due.Sub(p.clock.Now()); d > time.Millisecond {
		return p.sleep(ctx, d)
	}
	return ctx.Err()
}
