package detectors

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// byEnvelope reports whether a sustained detection was raised by the envelope run.
func byEnvelope(d Detection) bool {
	return d.Detector == KindSustained && strings.Contains(d.Reason, "the most it had sent around this hour")
}

// TestEnvelopeRun: a steady rise under the spike's hour line (twice the most seen at
// the hour) in the busiest hours of the day fires the sustained detector within three
// buckets; a rise within the slack never does, nor does the run before two days of
// history, with the sustained detector disabled, or during a fleet-wide rise.
func TestEnvelopeRun(t *testing.T) {
	base := steadyTraffic("acme", "k1", day(0), day(5), 20<<20, 1) // ~20 MiB per 5 min at 14:00, ±10%
	at := day(4).Add(13 * time.Hour)
	// extra MiB per 5-minute bucket to another destination for two hours from start
	extra := func(start time.Time, mib int64) []telemetry.Event {
		return series("acme", "k1", "198.51.100.7", start, start.Add(2*time.Hour), 30*time.Second, constant(mib<<20/10))
	}
	cases := []struct {
		name  string
		extra []telemetry.Event
		cfg   Config
		rise  bool
		want  bool // the envelope run fires within three buckets of the start
	}{
		{name: "steady traffic: nothing"},
		{name: "+22 MiB per bucket at 13:00 (about 1.8× the most seen): fires in the third bucket", extra: extra(at, 22), want: true},
		{name: "+1 MiB per bucket (within the slack): nothing", extra: extra(at, 1)},
		{name: "the same rise on the second day: no envelope run yet", extra: extra(day(1).Add(13*time.Hour), 22)},
		{name: "sustained disabled for the vendor", extra: extra(at, 22), cfg: Config{Vendors: killswitch.Inventory{"acme": {Disable: []string{"sustained"}}}}},
		{name: "during a fleet-wide rise", extra: extra(at, 22), rise: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := merge(base, tc.extra)
			var riseAt time.Time
			if tc.rise {
				riseAt = tc.extra[0].Time
			}
			var got []Detection
			runRising(mustEngine(t, tc.cfg), evs, riseAt, func(_ int, d Detection) {
				if d.Detector == KindSpike {
					t.Errorf("a spike: %s", d.Reason)
				}
				if byEnvelope(d) {
					got = append(got, d)
				}
			})
			if !tc.want {
				if len(got) > 0 {
					t.Fatalf("the envelope run fired: %s", got[0].Reason)
				}
				return
			}
			i := slices.IndexFunc(got, func(d Detection) bool { return d.Key == Key{Vendor: "acme", Credential: "k1"} })
			if len(got) != 2 || i < 0 { // the credential's key and the vendor's
				t.Fatalf("%d envelope-run detections, want 2 (acme/k1 and acme): %v", len(got), got)
			}
			d := got[i]
			start := tc.extra[0].Time
			if d.DetectedAt.Before(start.Add(10*time.Minute)) || !d.DetectedAt.Before(start.Add(15*time.Minute)) {
				t.Errorf("detected at %s, want in the third bucket from %s: %s", d.DetectedAt, start, d.Reason)
			}
			if !d.Window.Start.Equal(start) || !d.FirstAnomalousAt.Equal(start) || d.Severity != SeverityHigh {
				t.Errorf("window %v, first anomalous %s, severity %s; want the run from %s, high", d.Window, d.FirstAnomalousAt, d.Severity, start)
			}
			// two closed buckets of ~41 MiB each, and the third's bytes so far
			if d.AnomalousBytes < 2*(38<<20) || d.AnomalousBytes > 3*(46<<20) {
				t.Errorf("anomalous bytes %d, want the run's two closed buckets and the third's bytes so far", d.AnomalousBytes)
			}
			t.Log(d.Reason)
		})
	}
}

// officeTraffic sends perBucket per 5 minutes (±10%) from 08:00 to 18:00 on
// weekdays, a quarter of it at other hours, and weekend times it all day at weekends.
func officeTraffic(vendor, cred string, from, to time.Time, perBucket, weekend float64, seed uint64) []telemetry.Event {
	r := rand.New(rand.NewPCG(seed, 7))
	return series(vendor, cred, "198.51.100.1", from, to, 30*time.Second, func(tm time.Time) int64 {
		level := 0.25
		switch wd := tm.Weekday(); {
		case wd == time.Saturday || wd == time.Sunday:
			level = weekend
		case tm.Hour() >= 8 && tm.Hour() < 18:
			level = 1
		}
		return int64(perBucket / 10 * level * (0.9 + 0.2*r.Float64()))
	})
}

// TestEnvelopeRunComparableDay: a key first seen on a Friday afternoon knows its
// Monday-morning hours only from the quiet weekend. Its first Monday morning is not a
// run above its envelope, while a rise on its first Monday afternoon (hours seen on
// the Friday) is. (The return to the weekday level after one quiet weekend still
// fires the spike and the learned baseline's sustained detection, as before: one key
// alone is no fleet-wide shift.)
func TestEnvelopeRunComparableDay(t *testing.T) {
	from := day(4).Add(13 * time.Hour) // Friday 13:00
	base := officeTraffic("acme", "k1", from, day(8), 20<<20, 0.75, 3)
	for _, tc := range []struct {
		name string
		at   time.Time // a rise of +19 MiB per bucket for two hours; zero: none
		want bool
	}{
		{name: "the first Monday: nothing"},
		{name: "a rise on the first Monday afternoon fires", at: day(7).Add(14 * time.Hour), want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := base
			if !tc.at.IsZero() {
				evs = merge(base, series("acme", "k1", "198.51.100.7", tc.at, tc.at.Add(2*time.Hour), 30*time.Second, constant(19<<20/10)))
			}
			var got []Detection
			e := mustEngine(t, Config{})
			for i := range evs {
				e.Process(&evs[i], func(d Detection) {
					if byEnvelope(d) {
						got = append(got, d)
					}
				})
			}
			switch {
			case !tc.want && len(got) > 0:
				t.Fatalf("%s on %s at %s: %s", got[0].Detector, got[0].Key, got[0].DetectedAt, got[0].Reason)
			case tc.want && (len(got) == 0 || got[0].DetectedAt.Before(tc.at) || got[0].DetectedAt.After(tc.at.Add(15*time.Minute))):
				t.Fatalf("want the envelope run to fire within 15 minutes of %s, got %v", tc.at, got)
			}
		})
	}
}

func TestSeenComparableDay(t *testing.T) {
	var m Model
	m.Update(&ModelParams{}, 1, SlotOf(day(4).Add(13*time.Hour))) // first seen Friday 13:00
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{
		{day(4).Add(20 * time.Hour), false},               // Friday evening: no earlier day
		{day(5).Add(10 * time.Hour), false},               // the first Saturday
		{day(6).Add(10 * time.Hour), true},                // Sunday: Saturday was a weekend day
		{day(7).Add(8 * time.Hour), false},                // Monday 08:00: Friday began at 13:00
		{day(7).Add(13*time.Hour + 30*time.Minute), true}, // Monday 13:30: Friday's 13:00 hour
		{day(8).Add(8 * time.Hour), true},                 // Tuesday 08:00: Monday
		{day(40).Add(3 * time.Hour), true},
	} {
		if got := m.seenComparableDay(SlotOf(tc.at)); got != tc.want {
			t.Errorf("%s (%s): %v, want %v", tc.at.Format(time.RFC3339), tc.at.Weekday(), got, tc.want)
		}
	}
}

// TestScenarioLowAndSlowDaytime: low-and-slow exfiltration in the busiest hours of
// the day (the generator starts it 22 hours after the recording's start, so a start
// at noon puts it at 10:00), on weekdays and weekends, is caught by every run, with a
// median delay within 30 minutes, and the envelope run fires on nothing else.
func TestScenarioLowAndSlowDaytime(t *testing.T) {
	var delays []time.Duration
	for _, tc := range []struct {
		seed  uint64
		start time.Time
	}{
		{41, day(0).Add(12 * time.Hour)}, // Monday noon: attacks at 10:00
		{42, day(0).Add(16 * time.Hour)}, // Monday 16:00: attacks at 14:00
		{34, day(4).Add(13 * time.Hour)}, // Friday 13:00: attacks at 11:00 on a weekend
	} {
		t.Run(fmt.Sprint("seed ", tc.seed), func(t *testing.T) {
			s, dets := scenarioDetections(t, scenario.Config{Seed: tc.seed, Days: 10, Vendors: 12, Attacks: 2, EventsPerMinute: 12, Start: tc.start})
			attacks := s.Attacks()
			for _, a := range attacks {
				if a.Kind != scenario.LowAndSlow {
					continue
				}
				i := slices.IndexFunc(dets, func(d Detection) bool {
					return d.Key == (Key{Vendor: a.Vendor, Credential: a.Credential}) && !d.DetectedAt.Before(a.Start) && d.DetectedAt.Before(a.End)
				})
				if i < 0 {
					t.Errorf("%s on %s/%s at %s (%s): not caught", a.Kind, a.Vendor, a.Credential, a.Start, a.Start.Weekday())
					continue
				}
				delays = append(delays, dets[i].DetectedAt.Sub(a.Start))
				t.Logf("%s on %s/%s at %s (%s): %s after %s", a.Kind, a.Vendor, a.Credential, a.Start, a.Start.Weekday(), dets[i].Detector, dets[i].DetectedAt.Sub(a.Start).Round(time.Second))
			}
			for _, d := range dets {
				attack := slices.ContainsFunc(attacks, func(a scenario.Attack) bool {
					return a.Vendor == d.Key.Vendor && !d.DetectedAt.Before(a.Start) && d.DetectedAt.Before(a.End.Add(2*time.Hour))
				})
				switch {
				case byEnvelope(d) && !attack:
					t.Errorf("the envelope run fired outside the attacks: %s at %s: %s", d.Key, d.DetectedAt, d.Reason)
				case d.Detector == KindSustained && !attack:
					t.Logf("a sustained detection outside the attacks (the learned baseline): %s at %s: %s", d.Key, d.DetectedAt, d.Reason)
				}
			}
		})
	}
	slices.Sort(delays)
	if len(delays) == 0 || delays[len(delays)/2] > 30*time.Minute {
		t.Errorf("low-and-slow delays %v, want a median within 30 minutes", delays)
	}
}
