package clock_test

import (
	"context"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
)

func TestPacer(t *testing.T) {
	start := time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)
	c := clock.NewManual(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	var slept []time.Duration
	sleep := func(_ context.Context, d time.Duration) error { slept = append(slept, d); c.Advance(d); return nil }
	p := clock.NewPacerWithClock(60, c, sleep)
	for _, off := range []time.Duration{0, time.Minute, time.Minute, 30 * time.Second, 3 * time.Minute} {
		if err := p.Wait(context.Background(), start.Add(off)); err != nil {
			t.Fatal(err)
		}
	}
	// at 60×: a minute of event time is a second; events not later than the last wait none
	want := []time.Duration{time.Second, 2 * time.Second}
	if len(slept) != len(want) || slept[0] != want[0] || slept[1] != want[1] {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	fast := clock.NewPacerWithClock(0, c, sleep)
	if err := fast.Wait(context.Background(), start.Add(time.Hour)); err != nil || len(slept) != 2 {
		t.Fatal("speed 0 waited")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := clock.NewPacer(1).Wait(ctx, start); err == nil {
		t.Fatal("Wait ignored a cancelled context")
	}
}
