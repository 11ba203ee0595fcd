package detectors

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/telemetry"
)

func TestCap(t *testing.T) {
	hour := time.Hour
	cases := []struct {
		name      string
		cap       killswitch.Cap
		events    []telemetry.Event
		wantAt    []time.Time // DetectedAt of each cap detection, in order
		wantKey   Key
		wantUnit  string
		wantSever Severity
	}{
		{
			name: "vendor bytes, fires on the crossing event, once per window, again next window",
			cap:  killswitch.Cap{Bytes: 10 << 20, Per: hour},
			// 1 MiB a minute: the 11th event of each hour makes 11 MiB > 10 MiB
			events:    series("acme", "k1", "198.51.100.1", day(0), day(0).Add(2*hour), time.Minute, constant(1<<20)),
			wantAt:    []time.Time{day(0).Add(10 * time.Minute), day(0).Add(hour + 10*time.Minute)},
			wantKey:   Key{Vendor: "acme"},
			wantUnit:  "bytes/1h",
			wantSever: SeverityHigh,
		},
		{
			name: "credential records, other credentials do not count",
			cap:  killswitch.Cap{Credential: "k1", Records: 5, Per: 10 * time.Minute},
			events: merge(
				series("acme", "k1", "198.51.100.1", day(0), day(0).Add(10*time.Minute), 2*time.Minute, constant(100)),                   // 5 records
				series("acme", "k2", "198.51.100.1", day(0), day(0).Add(10*time.Minute), 30*time.Second, constant(100)),                  // 20 records
				series("acme", "k1", "198.51.100.1", day(0).Add(10*time.Minute), day(0).Add(20*time.Minute), time.Minute, constant(100)), // 10 records
			),
			wantAt:    []time.Time{day(0).Add(15 * time.Minute)},
			wantKey:   Key{Vendor: "acme", Credential: "k1"},
			wantUnit:  "records/10m",
			wantSever: SeverityHigh,
		},
		{
			name:      "credential bytes far over the cap in one event is critical",
			cap:       killswitch.Cap{Credential: "k1", Bytes: 1 << 20, Per: hour},
			events:    series("acme", "k1", "198.51.100.1", day(0), day(0).Add(time.Minute), time.Minute, constant(5<<20)),
			wantAt:    []time.Time{day(0)},
			wantKey:   Key{Vendor: "acme", Credential: "k1"},
			wantUnit:  "bytes/1h",
			wantSever: SeverityCritical,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Vendors: killswitch.Inventory{"acme": {
				Caps:        []killswitch.Cap{tc.cap},
				Credentials: map[string]killswitch.Credential{"k1": {Kind: killswitch.CredTokenAccessor, Accessor: "a"}},
			}}}
			e := mustEngine(t, cfg)
			got := ofKind(run(e, tc.events), KindCap)
			if len(got) != len(tc.wantAt) {
				t.Fatalf("got %d cap detections %v, want %d", len(got), got, len(tc.wantAt))
			}
			for i, g := range got {
				d := g.d
				if !d.DetectedAt.Equal(tc.wantAt[i]) || !d.DetectedAt.Equal(tc.events[g.index].Time) {
					t.Errorf("detection %d at %s (event %s), want %s", i, d.DetectedAt, tc.events[g.index].Time, tc.wantAt[i])
				}
				if d.Key != tc.wantKey || d.Unit != tc.wantUnit || d.Severity != tc.wantSever {
					t.Errorf("detection %d: key %v unit %q severity %s, want %v %q %s", i, d.Key, d.Unit, d.Severity, tc.wantKey, tc.wantUnit, tc.wantSever)
				}
				if d.Observed <= d.Expected.High || d.Score < 0.5 || d.Score > 1 {
					t.Errorf("detection %d: observed %g, limit %g, score %g", i, d.Observed, d.Expected.High, d.Score)
				}
				if d.ID != DetectionID(KindCap, d.Key, d.Window.Start) {
					t.Errorf("detection %d: ID %s is not DetectionID(cap, key, window start)", i, d.ID)
				}
			}
		})
	}
}

func TestCapLateness(t *testing.T) {
	cfg := Config{Vendors: killswitch.Inventory{"acme": {Caps: []killswitch.Cap{{Bytes: 3 << 20, Per: 5 * time.Minute}}}}}
	e := mustEngine(t, cfg)
	at := func(hms string) time.Time {
		d, _ := time.ParseDuration(hms)
		return day(0).Add(10*time.Hour + d)
	}
	ev := func(t time.Time, b int64) telemetry.Event {
		return telemetry.Event{Time: t, Vendor: "acme", Bytes: b}
	}
	evs := []telemetry.Event{
		ev(at("10s"), 2<<20),    // window 10:00
		ev(at("5m30s"), 1<<20),  // window 10:05; watermark 10:04:30
		ev(at("4m50s"), 2<<20),  // out of order, within lateness: window 10:00 now holds 4 MiB
		ev(at("11m0s"), 1<<20),  // window 10:10; watermark 10:10:00
		ev(at("4m0s"), 3<<20),   // window 10:00 has closed: late, counted in 10:10 (4 MiB)
		ev(at("11m30s"), 1<<10), // nothing more
	}
	got := ofKind(run(e, evs), KindCap)
	if len(got) != 2 {
		t.Fatalf("got %v, want two cap detections", got)
	}
	if !got[0].d.Window.Start.Equal(at("0s")) || got[0].index != 2 {
		t.Errorf("first detection window %s at event %d, want window 10:00 at the out-of-order event 2", got[0].d.Window.Start, got[0].index)
	}
	if !got[1].d.Window.Start.Equal(at("10m0s")) || got[1].index != 4 {
		t.Errorf("second detection window %s at event %d, want window 10:10 at the late event 4", got[1].d.Window.Start, got[1].index)
	}
	if c := e.Counters(); c.Late != 1 || c.Events != 6 {
		t.Errorf("counters %+v, want 1 late of 6 events", c)
	}
}

// TestVolumeLateness checks bucket attribution inside the engine: out-of-order events
// within the allowed lateness land in their own bucket, later ones in the current one.
func TestVolumeLateness(t *testing.T) {
	e := mustEngine(t, Config{})
	at := func(hms string) time.Time {
		d, _ := time.ParseDuration(hms)
		return day(0).Add(10*time.Hour + d)
	}
	step := func(tm time.Time, b int64) {
		ev := telemetry.Event{Time: tm, Vendor: "acme", Credential: "k1", Bytes: b}
		e.Process(&ev, nil)
	}
	key := func() *keyState {
		i, ok := e.keys.find(0, "k1", keyHash(0, "k1"))
		if !ok {
			t.Fatal("key not found")
		}
		return e.keys.at(i)
	}
	step(at("1m"), 100)   // bucket 10:00
	step(at("5m30s"), 10) // bucket 10:05, 10:00 stays open (watermark 10:04:30)
	k := key()
	if k.curBytes != 10 || !k.has(flagPrevOpen) || k.prvBytes != 100 {
		t.Fatalf("after 10:05:30: cur %d prev %g open %v, want 10, 100, true", k.curBytes, k.prvBytes, k.has(flagPrevOpen))
	}
	step(at("4m59s"), 1000) // within lateness: bucket 10:00
	if k.prvBytes != 1100 || k.curBytes != 10 {
		t.Fatalf("out-of-order within lateness: prev %g cur %d, want 1100 and 10", k.prvBytes, k.curBytes)
	}
	step(at("6m30s"), 1) // watermark 10:05:30: bucket 10:00 closes and is learned
	if k.has(flagPrevOpen) || k.model.N() != 1 {
		t.Fatalf("bucket 10:00 should be closed and learned: open %v, n %d", k.has(flagPrevOpen), k.model.N())
	}
	step(at("2m"), 7) // late: counted in the current bucket 10:05
	if k.curBytes != 18 {
		t.Fatalf("late event: cur %d, want 18", k.curBytes)
	}
	step(at("30m30s"), 1) // gap: 10:05 .. 10:20 learned, 10:25 stays open (watermark 10:29:30)
	if k.model.N() != 5 || !k.has(flagPrevOpen) || k.prvBytes != 0 {
		t.Fatalf("after the gap: n %d open %v prev %g, want 5 learned, 10:25 open and empty", k.model.N(), k.has(flagPrevOpen), k.prvBytes)
	}
	step(at("29m50s"), 5) // within lateness: the empty bucket 10:25
	if k.prvBytes != 5 || k.curBytes != 1 {
		t.Fatalf("prev %g cur %d, want 5 and 1", k.prvBytes, k.curBytes)
	}
	step(at("45m"), 1) // watermark 10:44: 10:25 .. 10:35 learned, 10:40 open
	if k.model.N() != 8 || !k.has(flagPrevOpen) {
		t.Fatalf("n %d open %v, want 8 learned and 10:40 open", k.model.N(), k.has(flagPrevOpen))
	}
	if c := e.Counters(); c.Late != 1 {
		t.Fatalf("late = %d, want 1", c.Late)
	}
}

// steadyTraffic is a credential sending about perBucket bytes every 5 minutes as 10
// events, with ±10% deterministic noise, following a daily profile (quiet nights).
func steadyTraffic(vendor, cred string, from, to time.Time, perBucket float64, seed uint64) []telemetry.Event {
	r := rand.New(rand.NewPCG(seed, 7))
	return series(vendor, cred, "198.51.100.1", from, to, 30*time.Second, func(tm time.Time) int64 {
		h := float64(tm.Hour()) + float64(tm.Minute())/60
		level := 0.25 + 0.75*math.Exp(-(h-14)*(h-14)/18)
		return int64(perBucket / 10 * level * (0.9 + 0.2*r.Float64()))
	})
}

func TestSpike(t *testing.T) {
	burstAt := day(3).Add(14*time.Hour + 2*time.Minute)
	base := merge(
		steadyTraffic("acme", "k1", day(0), day(4), 20<<20, 1),
		steadyTraffic("acme", "k2", day(0), day(4), 20<<20, 2),
		steadyTraffic("other", "o1", day(0), day(4), 20<<20, 3),
	)
	cases := []struct {
		name   string
		extra  []telemetry.Event
		cfg    Config
		wantAt time.Time // zero: no spike at all
	}{
		{name: "steady traffic: nothing"},
		{
			name: "smash and grab on k1: fires on the crossing event",
			// 100 MiB every 10 s for 5 minutes, on top of ~20 MiB per 5 minutes
			extra:  series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(5*time.Minute), 10*time.Second, constant(100<<20)),
			wantAt: burstAt, // the first 100 MiB event already crosses
		},
		{
			name:   "one 100 MiB event at the default sensitivity fires",
			extra:  series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(time.Second), 10*time.Second, constant(100<<20)),
			wantAt: burstAt,
		},
		{
			name:   "a burst during the learning period does not fire",
			extra:  series("acme", "k1", "203.0.113.9", day(0).Add(14*time.Hour), day(0).Add(14*time.Hour+5*time.Minute), 10*time.Second, constant(100<<20)),
			wantAt: time.Time{},
		},
		{
			name:   "below MinBytes never fires",
			extra:  series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(5*time.Minute), 10*time.Second, constant(100<<20)),
			cfg:    Config{Settings: Settings{MinBytes: 1 << 40}},
			wantAt: time.Time{},
		},
		{
			name:   "a quarter of the sensitivity for the vendor: one 100 MiB event is not enough",
			extra:  series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(time.Second), 10*time.Second, constant(100<<20)),
			cfg:    Config{Vendors: killswitch.Inventory{"acme": {Sensitivity: 0.25}}},
			wantAt: time.Time{},
		},
		{
			name:   "disabled for the vendor",
			extra:  series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(5*time.Minute), 10*time.Second, constant(100<<20)),
			cfg:    Config{Vendors: killswitch.Inventory{"acme": {Disable: []string{"spike"}}}},
			wantAt: time.Time{},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := merge(base, tc.extra)
			e := mustEngine(t, tc.cfg)
			got := ofKind(run(e, evs), KindSpike)
			if tc.wantAt.IsZero() {
				if len(got) > 0 {
					t.Fatalf("unexpected spikes: %v", got)
				}
				return
			}
			var k1 *emitted
			for i := range got {
				g := &got[i]
				switch g.d.Key {
				case Key{Vendor: "acme", Credential: "k1"}:
					k1 = g
				case Key{Vendor: "acme"}: // the vendor total crosses too
				default:
					t.Errorf("spike for another key: %v", g)
				}
				if g.d.DetectedAt.Before(tc.wantAt) {
					t.Errorf("spike before the burst: %v", g)
				}
			}
			if k1 == nil {
				t.Fatalf("no spike for acme/k1 in %v", got)
			}
			d := k1.d
			if !d.DetectedAt.Equal(tc.wantAt) || !d.DetectedAt.Equal(evs[k1.index].Time) {
				t.Errorf("DetectedAt %s (event %s), want the crossing event at %s", d.DetectedAt, evs[k1.index].Time, tc.wantAt)
			}
			if d.Observed < d.Expected.High || d.Expected.High <= d.Expected.Low || d.Score < 0.5 || d.Score > 1 {
				t.Errorf("evidence: observed %g band %+v score %g", d.Observed, d.Expected, d.Score)
			}
			if d.Severity != SeverityCritical {
				t.Errorf("severity %s, want critical (a burst far above normal on a credential)", d.Severity)
			}
			if d.FirstAnomalousAt.After(d.DetectedAt) || d.FirstAnomalousAt.Before(d.Window.Start) || d.AnomalousBytes < 100<<20 {
				t.Errorf("first anomalous %s detected %s window %+v bytes %d", d.FirstAnomalousAt, d.DetectedAt, d.Window, d.AnomalousBytes)
			}
			if d.ID != DetectionID(KindSpike, d.Key, d.Window.Start) || d.Unit != "bytes/5m" {
				t.Errorf("ID %s unit %s", d.ID, d.Unit)
			}
			// an episode fires once: the rest of the burst adds nothing for k1
			n := 0
			for _, g := range got {
				if g.d.Key == d.Key {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d spikes for k1, want one per episode", n)
			}
		})
	}
}

// TestSpikeCrossingExact checks that no event before the crossing one had the running
// sum of its bucket at or above the line, and the crossing one did. The burst's events
// (3 MiB) stay below the one-event line (3× the key's largest event, ~1.6 MiB, at the
// hour), so it is the bucket's line that fires.
func TestSpikeCrossingExact(t *testing.T) {
	burstAt := day(3).Add(11*time.Hour + 30*time.Second)
	evs := merge(
		steadyTraffic("acme", "k1", day(0), day(4), 20<<20, 1),
		series("acme", "k1", "203.0.113.9", burstAt, burstAt.Add(4*time.Minute), 5*time.Second, constant(3<<20)),
	)
	e := mustEngine(t, Config{})
	got := ofKind(run(e, evs), KindSpike)
	var d *emitted
	for i := range got {
		if got[i].d.Credential == "k1" {
			d = &got[i]
		}
	}
	if d == nil {
		t.Fatalf("no spike for k1: %v", got)
	}
	var sum int64
	for i := 0; i <= d.index; i++ {
		ev := evs[i]
		if ev.Credential != "k1" || !ev.Time.Truncate(5*time.Minute).Equal(d.d.Window.Start) {
			continue
		}
		before := sum
		sum += ev.Bytes
		if i < d.index && float64(sum) >= d.d.Expected.High {
			t.Fatalf("event %d at %s already had %d ≥ line %g, but the detection came at event %d", i, ev.Time, sum, d.d.Expected.High, d.index)
		}
		if i == d.index && (float64(before) >= d.d.Expected.High || float64(sum) < d.d.Expected.High) {
			t.Fatalf("crossing event: %d → %d, line %g", before, sum, d.d.Expected.High)
		}
	}
	if d.d.Observed != float64(sum) {
		t.Errorf("observed %g, want the running sum %d", d.d.Observed, sum)
	}
	if d.index == 0 || evs[d.index].Time.Equal(burstAt) {
		t.Logf("crossed at the burst's event %d (%s)", d.index, evs[d.index].Time)
	}
}

func TestNightlyBatchDoesNotFire(t *testing.T) {
	batch := func(tm time.Time) int64 {
		// 2 MiB a minute all day, and a 30 MiB/min batch 02:00–02:20 every night
		if tm.Hour() == 2 && tm.Minute() < 20 {
			return 30 << 20
		}
		return 2 << 20
	}
	evs := series("acme", "etl", "198.51.100.1", day(0), day(10), time.Minute, batch)
	e := mustEngine(t, Config{})
	all := run(e, evs)
	for _, g := range all {
		if g.d.Detector == KindSpike || g.d.Detector == KindSustained {
			t.Errorf("the nightly batch fired: %v", g)
		}
	}
	// the detector is not simply dead: a burst at an unusual hour fires
	burst := series("acme", "etl", "198.51.100.1", day(10).Add(15*time.Hour), day(10).Add(15*time.Hour+10*time.Minute), time.Minute, constant(30<<20))
	got := ofKind(run(e, merge(series("acme", "etl", "198.51.100.1", day(10), day(10).Add(15*time.Hour), time.Minute, batch), burst)), KindSpike)
	if len(got) == 0 {
		t.Fatal("a batch-sized burst at 15:00 did not fire")
	}
}

func TestSustained(t *testing.T) {
	start := day(6).Add(22 * time.Hour)
	normal := func(seed uint64, lowAndSlow bool) func(time.Time) int64 {
		r := rand.New(rand.NewPCG(seed, 11))
		return func(tm time.Time) int64 {
			h := tm.Hour()
			rate := float64(2 << 20) // day: 2 MiB a minute
			if h < 7 || h >= 21 {
				rate = 200 << 10 // night: 200 KiB a minute
			}
			if lowAndSlow && !tm.Before(start) && tm.Before(start.Add(6*time.Hour)) {
				rate *= 3
			}
			return int64(rate * (0.8 + 0.4*r.Float64()))
		}
	}
	cases := []struct {
		name string
		low  bool
		want bool
	}{
		{"normal variation does not fire", false, false},
		{"3x the night rate for 6 hours fires", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := series("acme", "k1", "198.51.100.1", day(0), day(8), time.Minute, normal(5, tc.low))
			e := mustEngine(t, Config{})
			got := run(e, evs)
			sust := ofKind(got, KindSustained)
			if !tc.want {
				for _, g := range got {
					if g.d.Detector == KindSpike || g.d.Detector == KindSustained {
						t.Errorf("false alarm: %v", g)
					}
				}
				return
			}
			if len(sust) == 0 {
				t.Fatalf("no sustained detection; got %v", got)
			}
			for _, g := range sust {
				d := g.d
				if d.DetectedAt.Before(start) || d.DetectedAt.After(start.Add(6*time.Hour)) {
					t.Errorf("sustained outside the low-and-slow window: %v", g)
				}
				if d.FirstAnomalousAt.Before(start.Add(-15*time.Minute)) || d.FirstAnomalousAt.After(d.DetectedAt) {
					t.Errorf("first anomalous %s, want near the start %s", d.FirstAnomalousAt, start)
				}
				if d.AnomalousBytes < 1<<20 || d.Score < 0.5 {
					t.Errorf("anomalous bytes %d score %g", d.AnomalousBytes, d.Score)
				}
			}
		})
	}
}

func TestNewDestination(t *testing.T) {
	allow := []string{"198.51.100.0/24", "api.example.com", "*.cdn.example.net", "203.0.113.7"}
	cases := []struct {
		name   string
		allow  []string
		events []telemetry.Event
		want   []string // destinations that fire, in order
	}{
		{
			name:  "allow-list: outside fires on first byte, once",
			allow: allow,
			events: []telemetry.Event{
				{Time: day(0), Vendor: "acme", Credential: "k1", Dst: "198.51.100.9", Bytes: 10},
				{Time: day(0).Add(time.Second), Vendor: "acme", Credential: "k1", Dst: "API.Example.com", Bytes: 10},
				{Time: day(0).Add(2 * time.Second), Vendor: "acme", Credential: "k1", Dst: "x.cdn.example.net", Bytes: 10},
				{Time: day(0).Add(3 * time.Second), Vendor: "acme", Credential: "k1", Dst: "203.0.113.7", Bytes: 10},
				{Time: day(0).Add(4 * time.Second), Vendor: "acme", Credential: "k1", Dst: "192.0.2.1", Bytes: 0}, // no byte yet
				{Time: day(0).Add(5 * time.Second), Vendor: "acme", Credential: "k1", Dst: "192.0.2.1", Bytes: 1},
				{Time: day(0).Add(6 * time.Second), Vendor: "acme", Credential: "k1", Dst: "192.0.2.1", Bytes: 1 << 20},
				{Time: day(0).Add(7 * time.Second), Vendor: "acme", Dst: "evil.example.org", Bytes: 5},
			},
			want: []string{"192.0.2.1", "evil.example.org"},
		},
		{
			// The learning period is the vendor's observed history: the vendor sends
			// every 10 minutes (bg), so a day of event time is a day of history.
			name: "learned: quiet during the learning period, then a new destination fires once",
			events: merge(series("acme", "bg", "198.51.100.9", day(0), day(1).Add(4*time.Hour), 10*time.Minute, constant(10)), []telemetry.Event{
				{Time: day(0), Vendor: "acme", Credential: "k1", Dst: "198.51.100.9", Bytes: 10},
				{Time: day(0).Add(23 * time.Hour), Vendor: "acme", Credential: "k1", Dst: "198.51.100.10", Bytes: 10},
				{Time: day(1).Add(time.Hour), Vendor: "acme", Credential: "k1", Dst: "198.51.100.9", Bytes: 10},
				{Time: day(1).Add(2 * time.Hour), Vendor: "acme", Credential: "k1", Dst: "203.0.113.50", Bytes: 10},
				{Time: day(1).Add(3 * time.Hour), Vendor: "acme", Credential: "k2", Dst: "203.0.113.50", Bytes: 10},
			}),
			want: []string{"203.0.113.50"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Vendors: killswitch.Inventory{"acme": {AllowedDestinations: tc.allow}}}
			e := mustEngine(t, cfg)
			got := ofKind(run(e, tc.events), KindNewDestination)
			var dsts []string
			for _, g := range got {
				dsts = append(dsts, g.d.Destination)
				ev := tc.events[g.index]
				if !g.d.DetectedAt.Equal(ev.Time) || g.d.Key != (Key{Vendor: ev.Vendor, Credential: ev.Credential}) || g.d.Severity != SeverityHigh {
					t.Errorf("detection %+v for event %+v", g.d, ev)
				}
				if g.d.ID != DetectionIDFor(KindNewDestination, g.d.Key, g.d.Destination, ev.Time) {
					t.Errorf("ID %s", g.d.ID)
				}
			}
			if strings.Join(dsts, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("fired for %v, want %v", dsts, tc.want)
			}
		})
	}
}

func TestDestSetBounded(t *testing.T) {
	var s destSet
	evicted := 0
	for i := range 20000 {
		if s.insert(destTag(strings.Repeat("x", i%7)+string(rune('a'+i%26))+itoa(i)), false) {
			evicted++
		}
	}
	if len(s.slots) != destMaxSlots || evicted == 0 {
		t.Fatalf("slots %d evicted %d: the set must stay bounded at %d slots", len(s.slots), evicted, destMaxSlots)
	}
	// the most recent destinations are remembered
	for i := 19990; i < 20000; i++ {
		if s.lookup(destTag(strings.Repeat("x", i%7)+string(rune('a'+i%26))+itoa(i))) == 0 {
			t.Errorf("recent destination %d forgotten", i)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestDormant(t *testing.T) {
	cfg := Config{Vendors: killswitch.Inventory{"acme": {Credentials: map[string]killswitch.Credential{
		"breakglass": {Kind: killswitch.CredTokenAccessor, Accessor: "acc", ExpectedIdle: true},
	}}}}
	ev := func(tm time.Time, cred string, b int64) telemetry.Event {
		return telemetry.Event{Time: tm, Vendor: "acme", Credential: cred, Dst: "198.51.100.1", Bytes: b}
	}
	// Dormancy is the vendor's observed history since the credential last moved data:
	// the vendor keeps sending (credential bg, every 10 minutes) while the credentials
	// under test are idle.
	bg := func(to time.Time) []telemetry.Event {
		return series("acme", "bg", "198.51.100.1", day(0), to, 10*time.Minute, constant(100))
	}
	cases := []struct {
		name   string
		events []telemetry.Event
		want   []time.Time // times of the events that fire
	}{
		{
			name: "idle for more than DormantAfter fires on the first data",
			events: merge(bg(day(8).Add(time.Hour)), []telemetry.Event{
				ev(day(0), "old", 100), ev(day(8), "old", 0), ev(day(8).Add(time.Minute), "old", 100), ev(day(8).Add(2*time.Minute), "old", 100),
			}),
			want: []time.Time{day(8).Add(time.Minute)},
		},
		{
			name:   "idle for less does not",
			events: merge(bg(day(6).Add(time.Hour)), []telemetry.Event{ev(day(0), "recent", 100), ev(day(6), "recent", 100)}),
		},
		{
			name:   "a credential first seen has no history",
			events: merge(bg(day(9).Add(time.Hour)), []telemetry.Event{ev(day(9), "new", 100)}),
		},
		{
			name: "expected idle: every session fires, once",
			events: merge(bg(day(0).Add(3*time.Hour)), []telemetry.Event{
				ev(day(0), "breakglass", 100), ev(day(0).Add(10*time.Minute), "breakglass", 100),
				ev(day(0).Add(2*time.Hour), "breakglass", 100),
			}),
			want: []time.Time{day(0), day(0).Add(2 * time.Hour)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := mustEngine(t, cfg)
			got := ofKind(run(e, tc.events), KindDormant)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want detections at %v", got, tc.want)
			}
			for i, g := range got {
				// a credential marked expected_idle moving data is critical; a merely unused one is high
				want := SeverityHigh
				if g.d.Credential == "breakglass" {
					want = SeverityCritical
				}
				if !g.d.DetectedAt.Equal(tc.want[i]) || !g.d.DetectedAt.Equal(tc.events[g.index].Time) || g.d.Credential == "bg" ||
					g.d.Severity != want || g.d.Score < 0.5 {
					t.Errorf("detection %d: %+v, want at %s", i, g.d, tc.want[i])
				}
			}
		})
	}
}

func TestSilence(t *testing.T) {
	stop := day(2).Add(10 * time.Hour)
	a := series("quiet", "q1", "198.51.100.1", day(0), stop, time.Minute, constant(1000))
	b := series("busy", "b1", "198.51.100.1", day(0), day(3), time.Minute, constant(1000))
	last := a[len(a)-1].Time

	t.Run("event time through another vendor", func(t *testing.T) {
		e := mustEngine(t, Config{})
		got := ofKind(run(e, merge(a, b)), KindSilence)
		if len(got) != 1 {
			t.Fatalf("got %v, want one silence alert", got)
		}
		d := got[0].d
		if d.Vendor != "quiet" || !d.DetectedAt.Equal(last.Add(30*time.Minute)) || !d.FirstAnomalousAt.Equal(last) {
			t.Errorf("detection %+v, want vendor quiet detected at %s", d, last.Add(30*time.Minute))
		}
		if d.Severity != SeverityMedium || !strings.Contains(d.Reason, "alert") || !strings.Contains(d.Reason, "never") {
			t.Errorf("severity %s reason %q: silence must be a medium alert that says it never revokes", d.Severity, d.Reason)
		}
	})
	t.Run("processing time through Tick", func(t *testing.T) {
		e := mustEngine(t, Config{})
		if got := run(e, a); len(ofKind(got, KindSilence)) != 0 {
			t.Fatalf("silence while sending: %v", got)
		}
		var got []Detection
		emit := func(d Detection) {
			if d.Vendor == "quiet" { // its sensor, which saw only this vendor, goes silent too
				got = append(got, d)
			}
		}
		e.Tick(last.Add(29*time.Minute), emit)
		if len(got) != 0 {
			t.Fatalf("fired before SilenceAfter: %v", got)
		}
		e.Tick(last.Add(31*time.Minute), emit)
		e.Tick(last.Add(2*time.Hour), emit)
		if len(got) != 1 || got[0].Vendor != "quiet" || !got[0].DetectedAt.Equal(last.Add(30*time.Minute)) {
			t.Fatalf("got %+v, want one alert for quiet detected at %s", got, last.Add(30*time.Minute))
		}
		// the episode ends with the next event; a new silence alerts again
		again := series("quiet", "q1", "198.51.100.1", day(2).Add(12*time.Hour), day(2).Add(13*time.Hour), time.Minute, constant(1000))
		run(e, again)
		e.Tick(day(2).Add(14*time.Hour), emit)
		if len(got) != 2 {
			t.Fatalf("got %d alerts, want a second one after the vendor came back and stopped again", len(got))
		}
	})
	t.Run("sensor silence", func(t *testing.T) {
		s1 := series("busy", "b1", "198.51.100.1", day(0), day(3), time.Minute, constant(1000))
		for i := range s1 {
			if s1[i].Time.After(stop) {
				s1[i].Sensor = "gw-2" // gw-1 stops seeing anything
			}
		}
		e := mustEngine(t, Config{})
		got := ofKind(run(e, s1), KindSilence)
		if len(got) != 1 || got[0].d.Sensor != "gw-1" || got[0].d.Vendor != "" {
			t.Fatalf("got %v, want one alert for sensor gw-1", got)
		}
	})
	t.Run("not during the learning period, not for irregular vendors", func(t *testing.T) {
		e := mustEngine(t, Config{})
		early := series("new", "n1", "198.51.100.1", day(0), day(0).Add(2*time.Hour), time.Minute, constant(1000))
		rare := series("rare", "r1", "198.51.100.1", day(0), day(3), 2*time.Hour, constant(1000))
		if got := ofKind(run(e, merge(early, rare, b)), KindSilence); len(got) != 0 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("a source quiet every night is not reported every night", func(t *testing.T) {
		nightly := series("office", "o1", "198.51.100.1", day(0), day(7), time.Minute, func(tm time.Time) int64 {
			if tm.Hour() >= 8 && tm.Hour() < 20 {
				return 1000
			}
			return 0
		})
		e := mustEngine(t, Config{})
		got := ofKind(run(e, merge(nightly, series("busy", "b1", "198.51.100.1", day(0), day(7), time.Minute, constant(1000)))), KindSilence)
		for _, g := range got {
			if g.d.DetectedAt.After(day(2)) {
				t.Errorf("nightly quiet reported after the first nights: %v", g)
			}
		}
	})
}

func TestDisableAndRejected(t *testing.T) {
	cfg := Config{Settings: Settings{Disable: []string{"new_destination"}},
		Vendors: killswitch.Inventory{"acme": {AllowedDestinations: []string{"198.51.100.1"}}}}
	e := mustEngine(t, cfg)
	evs := []telemetry.Event{
		{Time: day(0), Vendor: "acme", Dst: "192.0.2.1", Bytes: 10},
		{Time: day(0), Vendor: "", Bytes: 10},
		{Time: day(0), Vendor: "acme", Bytes: -1},
		{Vendor: "acme", Bytes: 1},
		{Time: day(0), Vendor: "acme", Credential: strings.Repeat("c", 70000), Bytes: 1},
	}
	if got := run(e, evs); len(got) != 0 {
		t.Fatalf("got %v", got)
	}
	if c := e.Counters(); c.Events != 5 || c.Rejected != 4 || c.Keys != 1 || c.Vendors != 1 {
		t.Fatalf("counters %+v", c)
	}
	if _, err := New(Config{Settings: Settings{Disable: []string{"nope"}}}); err == nil {
		t.Fatal("unknown kind accepted")
	}
}

func TestMaxKeys(t *testing.T) {
	e := mustEngine(t, Config{}, WithMaxKeys(3))
	for i := range 5 {
		ev := telemetry.Event{Time: day(0), Vendor: "acme", Credential: "k" + itoa(i), Bytes: 1}
		e.Process(&ev, nil)
	}
	if c := e.Counters(); c.Keys != 3 || c.KeysRefused != 3 {
		t.Fatalf("counters %+v, want 3 keys (vendor + 2) and 3 refused", c)
	}
}

func TestMaxKeysBoundsVendors(t *testing.T) {
	e := mustEngine(t, Config{}, WithMaxKeys(2))
	for i := range 5 {
		ev := telemetry.Event{Time: day(0), Vendor: "v" + itoa(i), Bytes: 1}
		e.Process(&ev, nil)
	}
	if c := e.Counters(); c.Vendors != 2 || c.Keys != 2 || c.KeysRefused != 3 {
		t.Fatalf("counters %+v, want 2 vendors and 3 events refused", c)
	}
}

func TestBand(t *testing.T) {
	e, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Band(Key{Vendor: "mailer"}); ok {
		t.Fatal("band of an unknown vendor")
	}
	start := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	// three days of a steady 10 MB per 5 minutes
	for i := range 3 * 24 * 12 {
		ev := telemetry.Event{Time: start.Add(time.Duration(i) * 5 * time.Minute), Vendor: "mailer", Credential: "api", Bytes: 10 << 20}
		e.Process(&ev, func(Detection) {})
	}
	b, ok := e.Band(Key{Vendor: "mailer", Credential: "api"})
	if !ok {
		t.Fatal("no band for a known key")
	}
	if want := start.Add((3*24*12 - 1) * 5 * time.Minute); !b.Start.Equal(want) {
		t.Fatalf("band start %s, want %s", b.Start, want)
	}
	if b.Expected < 5<<20 || b.Expected > 20<<20 || b.High <= b.Expected || math.IsInf(b.High, 1) {
		t.Fatalf("band %+v for a steady 10 MiB per bucket", b)
	}
	if _, ok := e.Band(Key{Vendor: "mailer", Credential: "other"}); ok {
		t.Fatal("band of an unknown credential")
	}
}

// TestSpikeOneEvent: after the warmup, one event of at least MinBytes at or above 3×
// the largest single event the key has sent around that hour of the day fires the
// spike on that event, before its bucket crosses its own line; an hour the key sends
// events that large at (a nightly batch) is learned, and a spike raised on one event
// below the key's top severity is raised again, critical, when the bucket crosses its
// line.
func TestSpikeOneEvent(t *testing.T) {
	var nightly [][]telemetry.Event // 8 MiB events every 30 s from 03:00 to 03:10
	for d := 0; d < 3; d++ {
		at := day(d).Add(3 * time.Hour)
		nightly = append(nightly, series("acme", "k1", "198.51.100.1", at, at.Add(10*time.Minute), 30*time.Second, constant(8<<20)))
	}
	// ~1.4 to 1.9 MiB per event around 11:00
	base := merge(append(nightly, steadyTraffic("acme", "k1", day(0), day(4), 20<<20, 1))...)
	at := day(3).Add(11*time.Hour + 2*time.Minute + 15*time.Second)
	one := func(at time.Time, b int64) []telemetry.Event {
		return series("acme", "k1", "203.0.113.9", at, at.Add(time.Second), time.Second, constant(b))
	}
	cases := []struct {
		name     string
		extra    []telemetry.Event
		cfg      Config
		rise     bool       // a fleet-wide rise is on from the first extra event
		want     []Severity // the spikes on acme/k1, in order; the first on the first extra event
		wantLate bool       // the second spike is the bucket's, after the first
	}{
		{name: "one 16 MiB event at 11:00 fires on the event", extra: one(at, 16<<20), want: []Severity{SeverityCritical}},
		{name: "the same event at 03:04, the nightly batch's hour, does not fire", extra: one(day(3).Add(3*time.Hour+4*time.Minute), 16<<20)},
		{name: "the same event an hour after the batch's hour does not fire either", extra: one(day(3).Add(4*time.Hour+4*time.Minute), 16<<20)},
		{name: "the same event during the warmup does not fire", extra: one(day(0).Add(11*time.Hour+2*time.Minute), 16<<20)},
		{name: "a 3 MiB event (below 3× the largest) does not fire", extra: one(at, 3<<20)},
		{name: "below MinBytes never fires", extra: one(at, 16<<20), cfg: Config{Settings: Settings{MinBytes: 32 << 20}}},
		{name: "disabled for the vendor", extra: one(at, 16<<20), cfg: Config{Vendors: killswitch.Inventory{"acme": {Disable: []string{"spike"}}}}},
		{name: "not during a fleet-wide rise (the bucket lines alone apply)", extra: one(at, 16<<20), rise: true},
		{
			name:     "7 MiB events every 5 s: high on the first, critical when the bucket crosses its line",
			extra:    series("acme", "k1", "203.0.113.9", at, at.Add(2*time.Minute), 5*time.Second, constant(7<<20)),
			want:     []Severity{SeverityHigh, SeverityCritical},
			wantLate: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := merge(base, tc.extra)
			var riseAt time.Time
			if tc.rise {
				riseAt = tc.extra[0].Time
			}
			var got []emitted
			runRising(mustEngine(t, tc.cfg), evs, riseAt, func(i int, d Detection) {
				if d.Detector == KindSpike && d.Key == (Key{Vendor: "acme", Credential: "k1"}) {
					got = append(got, emitted{d, i})
				}
			})
			if len(got) != len(tc.want) {
				t.Fatalf("%d spikes on acme/k1, want %d: %v", len(got), len(tc.want), got)
			}
			if len(got) == 0 {
				return
			}
			d := got[0].d
			first := tc.extra[0].Time
			if !d.DetectedAt.Equal(first) || !d.FirstAnomalousAt.Equal(first) {
				t.Errorf("detected %s, first anomalous %s, want both at the event %s", d.DetectedAt, d.FirstAnomalousAt, first)
			}
			if d.Observed >= d.Expected.High || d.ID != DetectionIDFor(KindSpike, d.Key, "event", d.Window.Start) || !strings.Contains(d.Reason, "in one event") {
				t.Errorf("not raised on the event: observed %g band %+v ID %s: %s", d.Observed, d.Expected, d.ID, d.Reason)
			}
			for i, g := range got {
				if g.d.Severity != tc.want[i] {
					t.Errorf("spike %d: severity %s, want %s: %s", i, g.d.Severity, tc.want[i], g.d.Reason)
				}
			}
			if tc.wantLate {
				late := got[1].d
				if !late.DetectedAt.After(d.DetectedAt) || late.Observed < late.Expected.High || late.ID != DetectionID(KindSpike, late.Key, late.Window.Start) {
					t.Errorf("second spike %s (first %s): observed %g band %+v ID %s", late.DetectedAt, d.DetectedAt, late.Observed, late.Expected, late.ID)
				}
			}
		})
	}
}
