package detectors

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

// TestStateSize pins the per-key state the memory budget is built on.
func TestStateSize(t *testing.T) {
	if s := unsafe.Sizeof(Model{}); s != 132 {
		t.Errorf("Model is %d bytes, want 132", s)
	}
	if keyStateSize != 280 {
		t.Errorf("keyState is %d bytes, want 280", keyStateSize)
	}
}

func TestSlotOf(t *testing.T) {
	cases := []struct {
		t             time.Time
		hour, weekday uint8
	}{
		{time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC), 0, 1},                         // Monday
		{time.Date(2026, 2, 8, 23, 59, 59, 0, time.UTC), 23, 0},                     // Sunday
		{time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), 0, 4},                         // Thursday
		{time.Date(1969, 12, 31, 23, 30, 0, 0, time.UTC), 23, 3},                    // before the epoch
		{time.Date(2026, 2, 2, 12, 0, 0, 0, time.FixedZone("x", 5*3600)), 7, 1},     // UTC is used
		{time.Date(2014, 7, 1, 0, 30, 0, 0, time.UTC), 0, 2},                        // NAB's nyc_taxi start, a Tuesday
		{time.Date(2026, 2, 7, 13, 0, 0, 0, time.UTC).Add(-time.Nanosecond), 12, 6}, // Saturday
	}
	for _, c := range cases {
		s := SlotOf(c.t)
		if s.Hour != c.hour || s.Weekday != c.weekday || s.Minute != c.t.Unix()/60-boolInt(c.t.Unix()%60 < 0) {
			t.Errorf("SlotOf(%s) = %+v, want hour %d weekday %d", c.t, s, c.hour, c.weekday)
		}
		if int(s.Weekday) != int(c.t.UTC().Weekday()) || int(s.Hour) != c.t.UTC().Hour() {
			t.Errorf("SlotOf(%s) = %+v disagrees with package time", c.t, s)
		}
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// trained returns a model that learned n observations of a noisy daily series.
func trained(p *ModelParams, n int, seed uint64) (Model, time.Time) {
	r := rand.New(rand.NewPCG(seed, 3))
	var m Model
	tm := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	for range n {
		h := float64(tm.Hour())
		x := 10 + 3*math.Sin(h/24*2*math.Pi) + r.NormFloat64()*0.5
		if r.IntN(50) == 0 {
			x += 4 // occasional bumps
		}
		m.Update(p, x, SlotOf(tm))
		tm = tm.Add(5 * time.Minute)
	}
	return m, tm
}

// TestTriggersMatchScore checks the inversion the engine relies on: the spike and
// sustained triggers are exactly where the upward scores reach 0.5.
func TestTriggersMatchScore(t *testing.T) {
	p := DefaultModelParams()
	for seed := range uint64(20) {
		m, tm := trained(&p, 400+int(seed)*97, seed)
		s := SlotOf(tm)
		spike, sust := m.Triggers(&p, s)
		if math.IsInf(spike, 1) {
			t.Fatalf("seed %d: no spike trigger after warmup", seed)
		}
		const eps = 1e-6
		if sc := m.Score(&p, spike+eps, s); sc.SpikeUp < 0.5 {
			t.Errorf("seed %d: SpikeUp at the trigger %g = %g, want ≥ 0.5", seed, spike, sc.SpikeUp)
		}
		if sc := m.Score(&p, spike-eps, s); sc.SpikeUp >= 0.5 {
			t.Errorf("seed %d: SpikeUp just below the trigger %g = %g, want < 0.5 (%s)", seed, spike, sc.SpikeUp, sc.UpFeature)
		}
		if !math.IsInf(sust, 1) {
			if sc := m.Score(&p, sust+eps, s); sc.SustainedUp < 0.5 {
				t.Errorf("seed %d: SustainedUp at the trigger %g = %g", seed, sust, sc.SustainedUp)
			}
			if sc := m.Score(&p, sust-eps, s); sc.SustainedUp >= 0.5 {
				t.Errorf("seed %d: SustainedUp below the trigger %g = %g", seed, sust, sc.SustainedUp)
			}
		}
	}
}

func TestModelWarmupAndScoreRange(t *testing.T) {
	p := DefaultModelParams()
	var m Model
	tm := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	for i := range p.Warmup {
		if sc := m.Score(&p, 1e9, SlotOf(tm)); sc.Value != 0 {
			t.Fatalf("observation %d scored %g during warmup", i, sc.Value)
		}
		m.Update(&p, 5, SlotOf(tm))
		tm = tm.Add(time.Minute)
	}
	for _, x := range []float64{-1e12, -5, 0, 5, 5.0001, 6, 1e12, math.NaN(), math.Inf(1)} {
		sc := m.Score(&p, x, SlotOf(tm))
		for _, v := range []float64{sc.Value, sc.SpikeUp, sc.SpikeDown, sc.SustainedUp, sc.SustainedDown} {
			if v < 0 || v > 1 || math.IsNaN(v) {
				t.Errorf("Score(%g) = %+v: out of [0,1]", x, sc)
			}
		}
	}
	if sc := m.Score(&p, 1e6, SlotOf(tm)); sc.Value < 0.99 || sc.UpFeature == FeatureNone {
		t.Errorf("a huge jump scores %+v", sc)
	}
	if sc := m.Score(&p, -1e6, SlotOf(tm)); sc.SpikeDown < 0.99 {
		t.Errorf("a huge drop scores %+v", sc)
	}
	m.Update(&p, math.NaN(), SlotOf(tm))
	if m.N() != p.Warmup {
		t.Error("NaN was learned")
	}
}

func TestSeasonalOffsetsRescale(t *testing.T) {
	p := DefaultModelParams()
	var m Model
	tm := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	// small values first (a fine unit), then huge daily swings force the unit to grow
	for i := range 2000 {
		x := 0.001 * float64(i%7)
		if i > 1000 {
			x = 1e9 * math.Sin(float64(tm.Hour())/24*2*math.Pi)
		}
		m.Update(&p, x, SlotOf(tm))
		tm = tm.Add(5 * time.Minute)
	}
	h6 := m.offset(m.season[:], 6)
	h18 := m.offset(m.season[:], 18)
	if h6 < 1e8 || h18 > -1e8 {
		t.Fatalf("offsets at 06:00 %g and 18:00 %g, want large and of opposite signs", h6, h18)
	}
}

func TestSeriesScorerEpisode(t *testing.T) {
	p := DefaultModelParams()
	s := NewSeriesScorer(p)
	tm := time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	r := rand.New(rand.NewPCG(1, 2))
	var fired []int
	for i := range 2000 {
		x := 100 + 2*r.Float64() // bounded noise: nothing is a new extreme for long
		if i >= 1000 && i < 1020 {
			x = 500 // a level shift lasting 20 observations
		}
		if s.Observe(tm, x) >= 0.5 {
			fired = append(fired, i)
		}
		tm = tm.Add(5 * time.Minute)
	}
	if len(fired) != 1 || fired[0] != 1000 {
		t.Fatalf("fired at %v, want exactly once, at the shift (1000)", fired)
	}
}

func TestEpisode(t *testing.T) {
	var e episode
	if !e.start() || e.start() {
		t.Fatal("an episode starts once")
	}
	for range 2 {
		e.observe(false, 3)
	}
	e.observe(true, 3) // still anomalous: stays alive
	for range 2 {
		e.observe(false, 3)
	}
	if !e.active {
		t.Fatal("ended early")
	}
	e.observe(false, 3)
	if e.active || !e.start() {
		t.Fatal("three quiet observations end the episode")
	}
}
