package detectors

import (
	"math"
	"time"
)

// Feature names the part of the volume model that produced a score.
type Feature uint8

// The features of the volume model.
const (
	// FeatureNone means nothing was anomalous.
	FeatureNone Feature = iota
	// FeatureInnovation is the jump of an observation away from the short-term level.
	FeatureInnovation
	// FeatureLevel is the short-term level (an exponentially weighted average) leaving
	// its historical range: a level shift.
	FeatureLevel
	// FeatureVolatility is the short-term volatility leaving its historical range.
	FeatureVolatility
	// FeatureSeasonal is the residual against the hour-of-day baseline (net of the
	// day type) leaving its historical range.
	FeatureSeasonal
	// FeatureCUSUM is the cumulative sum of robust excess over the baseline crossing its
	// line: low-and-slow drift (the sustained detector).
	FeatureCUSUM
)

var featureNames = [...]string{"none", "innovation", "level", "volatility", "seasonal", "cusum"}

// String returns the feature's name.
func (f Feature) String() string {
	if int(f) < len(featureNames) {
		return featureNames[f]
	}
	return "unknown"
}

// ModelParams tunes the volume model. Counts and rates are per observation (one
// observation is one bucket of the egress engine, or one row of a NAB file).
// DefaultModelParams gives the values used everywhere; the same values produce the
// published NAB numbers.
type ModelParams struct {
	// Warmup is the number of observations learned before the model scores at all.
	Warmup int
	// Margin is how far (as a fraction of the feature's historical half-range) a feature
	// must go beyond its historical envelope to score 0.5. Divided by the sensitivity.
	Margin float64
	// FastAlpha is the smoothing factor of the short-term level.
	FastAlpha float64
	// VolAlpha is the smoothing factor of the short-term volatility.
	VolAlpha float64
	// SlowAlpha is the smoothing factor of the robust long-term baseline.
	SlowAlpha float64
	// ScaleAlpha is the smoothing factor of the robust (mean absolute deviation) scales.
	ScaleAlpha float64
	// SeasonAlpha is the per-day smoothing factor of the hour-of-day offsets: an
	// hour's offset moves by about SeasonAlpha of its error per day, however many
	// observations fall in the hour (it is divided by the observations per hour).
	SeasonAlpha float64
	// DayTypeAlpha is the per-week smoothing factor of the weekend offset (once it has
	// been learned as a running mean over the first weekend observations).
	DayTypeAlpha float64
	// EnvDecay is how fast (per observation) an envelope shrinks back towards its centre.
	EnvDecay float64
	// VolMidAlpha is the smoothing factor of the volatility envelope's centre.
	VolMidAlpha float64
	// EnvClip and EnvClipGain bound how much an anomalous observation widens an
	// envelope: beyond EnvClip half-ranges only EnvClipGain of the excess is learned.
	EnvClip, EnvClipGain float64
	// Huber bounds the influence of one observation on the baseline, the scales and
	// the seasonal offsets: it is clipped to baseline ± Huber scales before learning.
	Huber float64
	// SeasonalAfter is how much history the seasonal baseline needs before it is used.
	SeasonalAfter time.Duration
	// SeasonalGain: the seasonal baseline is used only when its residual scale is below
	// SeasonalGain times the non-seasonal one (it must explain the data).
	SeasonalGain float64
	// DayTypeGain: the weekend offset is used only while the weekend residual with it
	// stays below DayTypeGain times the residual without it.
	DayTypeGain float64
	// CusumSlack is the allowance k (in robust scales) of the CUSUM; CusumLimit its
	// decision line h (divided by the sensitivity); CusumClamp winsorises each step.
	CusumSlack, CusumLimit, CusumClamp float64
	// Quiet is the number of consecutive non-firing observations that end an episode.
	Quiet int
}

// DefaultModelParams returns the model parameters used by the engine and by cmd/nab.
// They were chosen once, for the whole NAB corpus (see cmd/nab), not per series.
func DefaultModelParams() ModelParams {
	return ModelParams{
		Warmup:        150,
		Margin:        0.2,
		FastAlpha:     0.2,
		VolAlpha:      0.1,
		SlowAlpha:     0.01,
		ScaleAlpha:    0.01,
		SeasonAlpha:   0.1,
		DayTypeAlpha:  0.05,
		EnvDecay:      1e-4,
		VolMidAlpha:   0.002,
		EnvClip:       0.5,
		EnvClipGain:   0.5,
		Huber:         8,
		SeasonalAfter: 48 * time.Hour,
		SeasonalGain:  0.9,
		DayTypeGain:   0.9,
		CusumSlack:    2,
		CusumLimit:    25,
		CusumClamp:    5,
		Quiet:         70,
	}
}

// WithSensitivity returns p scaled by a sensitivity: 2 makes the model twice as eager
// (half the margin, half the CUSUM line), 0.5 half as eager. Zero or negative means 1.
func (p ModelParams) WithSensitivity(s float64) ModelParams {
	if s <= 0 || math.IsNaN(s) || math.IsInf(s, 0) {
		return p
	}
	p.Margin /= s
	p.CusumLimit /= s
	return p
}

// Slot places an observation in the seasonal calendar (UTC).
type Slot struct {
	// Hour is the hour of the day, 0–23.
	Hour uint8
	// Weekday is the day of the week, 0 (Sunday) – 6.
	Weekday uint8
	// Minute is the observation time in minutes since the Unix epoch.
	Minute int64
}

// SlotOf returns the slot of t (in UTC).
func SlotOf(t time.Time) Slot { return slotOfUnix(t.Unix()) }

func slotOfUnix(sec int64) Slot {
	days := floorDiv(sec, 86400)
	return Slot{
		Hour:    uint8(floorDiv(sec, 3600) - days*24),
		Weekday: weekdayOf(days),
		Minute:  floorDiv(sec, 60),
	}
}

// weekdayOf returns the day of the week, 0 (Sunday) – 6, of the day days after the
// Unix epoch.
func weekdayOf(days int64) uint8 { return uint8(floorMod(days+4, 7)) } // 1970-01-01 was a Thursday

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func floorMod(a, b int64) int64 { return a - floorDiv(a, b)*b }

// Score is what the model says about one observation.
type Score struct {
	// Value is the anomaly score in [0,1]: the largest of the four below. ≥ 0.5 fires.
	Value float64
	// SpikeUp and SpikeDown score the observation being far above or far below what the
	// envelopes of the innovation, level, volatility and seasonal features allow.
	SpikeUp, SpikeDown float64
	// SustainedUp and SustainedDown score the CUSUM statistics against their line.
	SustainedUp, SustainedDown float64
	// UpFeature is the feature behind SpikeUp; DownFeature the one behind SpikeDown.
	UpFeature, DownFeature Feature
	// Expected is the model's expected value for this observation (the seasonal
	// baseline when it is in use, the short-term level otherwise).
	Expected float64
}

// Model is a compact streaming model of one series of volumes: a short-term level and
// volatility, a robust long-term baseline with hour-of-day offsets and a day type,
// historical envelopes (extreme-value memory) of four features, and a two-sided CUSUM.
// It scores each observation by how far it leaves what the past allows, in both
// directions, and learns from it afterwards. The zero value is an empty model.
//
// It also knows two day types, weekdays and weekends (Saturday and Sunday, UTC): the
// weekend offset is learned from the first weekend observation on (a running mean over
// the weekend observations seen, until the weekly smoothing takes over), and the
// baseline and the hour-of-day offsets learn the volume net of it, so a quiet weekend
// neither drags the baseline down nor makes the return to the weekday level on Monday
// look like excess.
//
// It has no day-of-week offsets: up to version 5 of the detector snapshots it learned
// one per day of the week and used them after 21 days, but they changed no detection
// on the generated recordings (10 and 28 days) and cost 0.76 NAB points and 16 bytes.
//
// State is fixed-size (no pointers): 132 bytes.
type Model struct {
	n  uint32 // observations learned
	t0 int32  // minute (since the Unix epoch) of the first observation

	fast, vol, volMid float32
	slow, mad, smad   float32
	cusUp, cusDown    float32

	innHi, innLo float32
	lvlHi, lvlLo float32
	volHi, volLo float32
	resHi, resLo float32

	// dayGate is the EW mean, over weekend observations, of |residual with the
	// weekend offset| − DayTypeGain × |residual without it|: the offset is used only
	// while it is negative (while the day type explains the data).
	dayGate float32

	season [24]int16
	qexp   int16 // the seasonal offsets are int16 × 2^qexp
	// dayOff is the weekend's offset from the weekday level (the day type, int16 ×
	// 2^qexp like the seasonal offsets), learned from dayN weekend observations.
	dayOff int16
	dayN   uint16
}

// isWeekend reports whether s falls on a Saturday or a Sunday (UTC).
func (s Slot) isWeekend() bool { return s.Weekday%7 == 0 || s.Weekday%7 == 6 }

// dayTypeOffset returns the day type's offset from the weekday level for slot s: the
// learned weekend offset on a weekend, 0 on a weekday or before any weekend was seen.
func (m *Model) dayTypeOffset(s Slot) float64 {
	if !s.isWeekend() || !m.dayTypeOn(s) {
		return 0
	}
	return m.weekendOff()
}

// weekendOff returns the weekend offset (model scale).
func (m *Model) weekendOff() float64 { return math.Ldexp(float64(m.dayOff), int(m.qexp)) }

// dayTypeOn reports whether the weekend offset is in use at slot s: learned from a
// whole weekend day of observations (it has been seen once), at least two robust
// scales away from the weekday level, and explaining the weekend data better than no
// offset.
func (m *Model) dayTypeOn(s Slot) bool {
	if math.Abs(m.weekendOff()) < 2*float64(m.mad) {
		return false
	}
	perDay := 1440.0
	if t0 := int64(m.t0); m.n > 1 && s.Minute > t0 {
		perDay = 1440 * float64(m.n) / float64(s.Minute-t0)
	}
	return float64(m.dayN) >= min(perDay, math.MaxUint16)
}

// WeekendOffset returns the offset of the weekend level from the weekday level (model
// scale; negative when weekends are quieter) and whether it is in use: a weekend has
// been seen and the day type explains the data.
func (m *Model) WeekendOffset() (float64, bool) {
	return m.weekendOff(), m.dayN > 0 && m.dayGate < 0
}

// seenComparableDay reports whether the model's history (since its first observation)
// includes slot s's hour of the day on an earlier day of the same day type (a weekday
// for a weekday, a weekend day for a weekend day).
func (m *Model) seenComparableDay(s Slot) bool {
	if m.n == 0 {
		return false
	}
	today := floorDiv(s.Minute, 1440)
	first := floorDiv(int64(m.t0), 1440)
	if int64(m.t0) >= first*1440+int64(s.Hour%24+1)*60 {
		first++ // the first day began after this hour
	}
	weekend := s.isWeekend()
	for d := today - 1; d >= max(first, today-7); d-- {
		if (Slot{Weekday: weekdayOf(d)}).isWeekend() == weekend {
			return true
		}
	}
	return false
}

// N returns the number of observations the model has learned.
func (m *Model) N() int { return int(m.n) }

// modelEval holds the feature values of one observation against the current state.
type modelEval struct {
	eps            float64
	inn, lvl, vol  float64
	base, sres     float64 // seasonal baseline and residual
	day            float64 // the day type's offset
	z              float64 // the CUSUM step before the slack
	zraw, zscale   float64 // the step before clamping, and its divisor
	seasonalOn     bool
	cusUp, cusDown float64 // provisional CUSUM statistics including this observation
}

func (m *Model) offset(a []int16, i int) float64 {
	return math.Ldexp(float64(a[i]), int(m.qexp))
}

func (m *Model) eval(p *ModelParams, x float64, s Slot) modelEval {
	var e modelEval
	slow, mad := float64(m.slow), float64(m.mad)
	e.eps = 1e-6*(math.Abs(slow)+mad) + 1e-12
	fast := float64(m.fast)
	elapsed := time.Duration(s.Minute-int64(m.t0)) * time.Minute
	season := m.offset(m.season[:], int(s.Hour%24))
	e.day = m.dayTypeOffset(s)
	e.base = slow + e.day + season
	e.sres = x - e.base
	e.seasonalOn = elapsed >= p.SeasonalAfter && float64(m.smad) < p.SeasonalGain*mad
	e.inn = x - fast
	e.lvl = fast + p.FastAlpha*e.inn
	e.vol = float64(m.vol) + p.VolAlpha*(math.Abs(e.inn)-float64(m.vol))
	var z float64
	if e.seasonalOn {
		e.zscale = float64(m.smad) + e.eps
		z = e.sres / e.zscale
	} else {
		e.zscale = mad + e.eps
		z = (x - slow - e.day) / e.zscale
	}
	e.zraw = z
	z = math.Max(-p.CusumClamp, math.Min(p.CusumClamp, z))
	e.z = z
	e.cusUp = math.Max(0, float64(m.cusUp)+z-p.CusumSlack)
	e.cusDown = math.Max(0, float64(m.cusDown)-z-p.CusumSlack)
	return e
}

// exceed returns how far f is beyond [lo, hi] in units of the half-range around mid.
func exceed(f, hi, lo, mid, eps float64) (up, down float64) {
	if f > hi {
		up = (f - hi) / (math.Max(hi-mid, 0) + eps)
	}
	if f < lo {
		down = (lo - f) / (math.Max(mid-lo, 0) + eps)
	}
	return up, down
}

// ratioScore maps a ≥ 0 to [0,1) so that a == line scores exactly 0.5.
func ratioScore(a, line float64) float64 {
	if a <= 0 || math.IsNaN(a) {
		return 0
	}
	if math.IsInf(a, 1) || line <= 0 {
		return 1
	}
	return a / (a + line)
}

// Score scores x observed in slot s against the model, without learning from it.
// A model that has learned fewer than p.Warmup observations scores 0.
func (m *Model) Score(p *ModelParams, x float64, s Slot) Score {
	if m.n == 0 || int(m.n) < p.Warmup || math.IsNaN(x) || math.IsInf(x, 0) {
		return Score{Expected: float64(m.fast)}
	}
	e := m.eval(p, x, s)
	var sc Score
	var aUp, aDown float64
	pick := func(f Feature, up, down float64) {
		if up > aUp {
			aUp, sc.UpFeature = up, f
		}
		if down > aDown {
			aDown, sc.DownFeature = down, f
		}
	}
	up, down := exceed(e.inn, float64(m.innHi), float64(m.innLo), 0, e.eps)
	pick(FeatureInnovation, up, down)
	up, down = exceed(e.lvl-e.day, float64(m.lvlHi), float64(m.lvlLo), float64(m.slow), e.eps)
	pick(FeatureLevel, up, down)
	up, down = exceed(e.vol, float64(m.volHi), float64(m.volLo), float64(m.volMid), e.eps)
	// Volatility has no sign: it counts in the direction the observation moved.
	if e.inn >= 0 {
		pick(FeatureVolatility, math.Max(up, down), 0)
	} else {
		pick(FeatureVolatility, 0, math.Max(up, down))
	}
	if e.seasonalOn {
		up, down = exceed(e.sres, float64(m.resHi), float64(m.resLo), 0, e.eps)
		pick(FeatureSeasonal, up, down)
		sc.Expected = e.base
	} else {
		sc.Expected = float64(m.fast)
	}
	sc.SpikeUp = ratioScore(aUp, p.Margin)
	sc.SpikeDown = ratioScore(aDown, p.Margin)
	sc.SustainedUp = ratioScore(e.cusUp, p.CusumLimit)
	sc.SustainedDown = ratioScore(e.cusDown, p.CusumLimit)
	sc.Value = math.Max(math.Max(sc.SpikeUp, sc.SpikeDown), math.Max(sc.SustainedUp, sc.SustainedDown))
	return sc
}

// Update learns x observed in slot s. Scoring and learning are separate so that the
// engine can score a bucket's running sum on every event and learn the bucket once,
// when it closes.
func (m *Model) Update(p *ModelParams, x float64, s Slot) { m.update(p, x, s, false, 0) }

// update learns x observed in slot s. The upward CUSUM counts x − disc (disc ≥ 0: a
// fleet-wide rise the engine discounts), the baselines and envelopes learn x itself.
// With holdUp, the observation adds nothing to the upward CUSUM (it counts as at most
// the baseline): the engine's guard for a volume the key has already sent at this hour
// on a comparable day.
func (m *Model) update(p *ModelParams, x float64, s Slot, holdUp bool, disc float64) {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return
	}
	if m.n == 0 {
		*m = Model{}
		m.n = 1
		m.t0 = int32(min(max(s.Minute, math.MinInt32), math.MaxInt32))
		m.fast, m.slow = float32(x), float32(x)
		m.lvlHi, m.lvlLo = float32(x), float32(x)
		m.qexp = initialExp(x)
		return
	}
	e := m.eval(p, x, s)
	if disc > 0 {
		e.z = math.Max(-p.CusumClamp, math.Min(p.CusumClamp, e.zraw-disc/e.zscale))
		e.cusUp = math.Max(0, float64(m.cusUp)+e.z-p.CusumSlack)
	}
	if holdUp {
		e.cusUp = math.Max(0, float64(m.cusUp)+math.Min(e.z, 0)-p.CusumSlack)
	}
	slow := float64(m.slow)

	// Envelopes: decay towards the centre, then widen to include the new value
	// (only partly when the value is far outside: an anomaly must not teach the
	// envelope that it is normal in one step).
	envUpdate(&m.innHi, &m.innLo, e.inn, 0, p)
	envUpdate(&m.lvlHi, &m.lvlLo, e.lvl-e.day, slow, p)
	m.volMid += float32(p.VolMidAlpha * (e.vol - float64(m.volMid)))
	envUpdate(&m.volHi, &m.volLo, e.vol, float64(m.volMid), p)
	envUpdate(&m.resHi, &m.resLo, e.sres, 0, p)

	// Robust scales of the residuals with and without the seasonal baseline.
	a := p.ScaleAlpha
	m.smad += float32(a * (math.Abs(e.sres) - float64(m.smad)))

	// CUSUM: commit, and restart both sides after a crossing.
	if e.cusUp > p.CusumLimit || e.cusDown > p.CusumLimit {
		m.cusUp, m.cusDown = 0, 0
	} else {
		m.cusUp, m.cusDown = float32(e.cusUp), float32(e.cusDown)
	}

	// Baseline, scale and seasonal offsets learn a Huber-clipped value.
	// They learn the volume net of the day type's offset.
	xc := x - e.day
	if m.n > 10 && p.Huber > 0 {
		lim := p.Huber * (float64(m.mad) + e.eps)
		xc = math.Max(slow-lim, math.Min(slow+lim, xc))
	}
	m.mad += float32(a * (math.Abs(xc-slow) - float64(m.mad)))
	h := int(s.Hour % 24)
	so := m.offset(m.season[:], h)
	aS, aW := m.seasonAlphas(p, s)
	if s.isWeekend() {
		// The weekend offset: a running mean over the weekend observations seen
		// (from the first one on), then the weekly smoothing.
		// It learns in the background (the gate says when it is used): the gate
		// compares the residuals with and without it.
		raw := xc + e.day - slow - so // the residual without the offset
		off := m.weekendOff()
		m.dayGate += float32(a * (math.Abs(raw-off) - p.DayTypeGain*math.Abs(raw) - float64(m.dayGate)))
		aD := math.Max(aW, 1/(float64(m.dayN)+dayTypePrior))
		m.setWeekendOff(off + aD*(raw-off))
		if m.dayN < math.MaxUint16 {
			m.dayN++
		}
		if e.day != 0 {
			xc -= aD * (xc - slow - so)
		}
	}
	so += aS * (xc - slow - so)
	m.setOffset(m.season[:], h, so)
	m.slow += float32(p.SlowAlpha * (xc - slow))

	m.fast = float32(e.lvl)
	m.vol = float32(e.vol)
	if m.n < math.MaxUint32 {
		m.n++
	}
}

// dayTypePrior damps the first weekend observations: the weekend offset starts as a
// running mean that counts this many observations of no offset.
const dayTypePrior = 12

// seasonAlphas returns the per-observation smoothing factors of the hour-of-day offsets
// and of the weekend offset: the per-day (per-week) factors divided by the number of
// observations per hour (per day), estimated from the observations so far, but never
// below a running mean's 1/visits while the slots are young.
func (m *Model) seasonAlphas(p *ModelParams, s Slot) (hour, week float64) {
	step := 1.0 // minutes per observation
	if t0 := int64(m.t0); m.n > 1 && s.Minute > t0 {
		step = float64(s.Minute-t0) / float64(m.n)
	}
	perHour := math.Min(math.Max(60/step, 1), 3600)
	perDay := math.Min(math.Max(1440/step, 1), 86400)
	n := float64(m.n)
	hour = math.Max(p.SeasonAlpha/perHour, 24/(n+24))
	week = math.Max(p.DayTypeAlpha/perDay, 7/(n+7))
	return hour, week
}

func envUpdate(hi, lo *float32, f, mid float64, p *ModelParams) {
	h, l := float64(*hi), float64(*lo)
	h -= p.EnvDecay * (h - mid)
	l += p.EnvDecay * (mid - l)
	if f > h {
		lim := h + p.EnvClip*(h-mid)
		if p.EnvClip > 0 && f > lim {
			h = lim + p.EnvClipGain*(f-lim)
		} else {
			h = f
		}
	}
	if f < l {
		lim := l - p.EnvClip*(mid-l)
		if p.EnvClip > 0 && f < lim {
			l = lim - p.EnvClipGain*(lim-f)
		} else {
			l = f
		}
	}
	*hi, *lo = float32(h), float32(l)
}

// The seasonal offsets are stored as int16 with a shared power-of-two unit that grows
// when an offset would overflow (halving every entry, which is exact up to rounding).
const (
	minQexp = -60
	maxQexp = 200
)

func initialExp(x float64) int16 {
	ax := math.Abs(x)
	if ax == 0 || ax < 1e-12 {
		return -40
	}
	_, e := math.Frexp(ax)
	return int16(max(minQexp, min(maxQexp, e-14)))
}

func (m *Model) setOffset(a []int16, i int, v float64) {
	a[i] = m.quantize(v)
}

// setWeekendOff sets the weekend offset.
func (m *Model) setWeekendOff(v float64) { m.dayOff = m.quantize(v) }

// quantize returns v in the offsets' unit, first growing the unit (halving every
// offset) until v fits.
func (m *Model) quantize(v float64) int16 {
	for {
		q := math.Round(math.Ldexp(v, -int(m.qexp)))
		if math.Abs(q) <= math.MaxInt16 || m.qexp >= maxQexp {
			return int16(math.Max(math.MinInt16, math.Min(math.MaxInt16, q)))
		}
		m.qexp++
		for j := range m.season {
			m.season[j] = halve(m.season[j])
		}
		m.dayOff = halve(m.dayOff)
	}
}

func halve(v int16) int16 {
	return int16(math.Round(float64(v) / 2))
}

// Triggers returns, for an observation in slot s, the smallest value at which the
// model's upward spike score reaches 0.5 and the smallest at which its upward
// sustained score does (+Inf when none can). Because both upward scores grow with x,
// x ≥ spike ⇔ SpikeUp ≥ 0.5 and x ≥ sustained ⇔ SustainedUp ≥ 0.5, so a running sum
// can be checked on every event with one comparison.
func (m *Model) Triggers(p *ModelParams, s Slot) (spike, sustained float64) {
	inf := math.Inf(1)
	if m.n == 0 || int(m.n) < p.Warmup {
		return inf, inf
	}
	e := m.eval(p, float64(m.fast), s)
	fast, slow := float64(m.fast), float64(m.slow)
	c := p.Margin
	spike = inf
	// innovation: x − fast ≥ T
	t := float64(m.innHi) + c*(math.Max(float64(m.innHi), 0)+e.eps)
	spike = math.Min(spike, fast+t)
	// level: fast + α(x − fast) ≥ T
	t = float64(m.lvlHi) + c*(math.Max(float64(m.lvlHi)-slow, 0)+e.eps)
	if p.FastAlpha > 0 {
		spike = math.Min(spike, fast+(t+e.day-fast)/p.FastAlpha)
	}
	// volatility: vol + β(|x − fast| − vol) ≥ T, upward branch
	t = float64(m.volHi) + c*(math.Max(float64(m.volHi)-float64(m.volMid), 0)+e.eps)
	if p.VolAlpha > 0 {
		d := float64(m.vol) + (t-float64(m.vol))/p.VolAlpha
		spike = math.Min(spike, fast+math.Max(d, 0))
	}
	if e.seasonalOn {
		t = float64(m.resHi) + c*(math.Max(float64(m.resHi), 0)+e.eps)
		spike = math.Min(spike, e.base+t)
	}
	// CUSUM: cusUp + clamp(z) − k ≥ h
	sustained = inf
	need := p.CusumLimit + p.CusumSlack - float64(m.cusUp)
	if need <= p.CusumClamp {
		if e.seasonalOn {
			sustained = e.base + need*(float64(m.smad)+e.eps)
		} else {
			sustained = slow + e.day + need*(float64(m.mad)+e.eps)
		}
	}
	return spike, sustained
}

// episode implements the "fire once per episode" rule shared by the detectors: an
// episode starts when an observation fires and ends after Quiet consecutive
// observations that do not fire. While it is active, nothing fires again.
type episode struct {
	active bool
	quiet  uint16
}

// start reports whether a firing observation starts a new episode, and starts it.
func (e *episode) start() bool {
	if e.active {
		e.quiet = 0
		return false
	}
	e.active, e.quiet = true, 0
	return true
}

// observe closes one observation of an active episode: a firing observation keeps the
// episode alive, Quiet non-firing ones in a row end it.
func (e *episode) observe(fired bool, quiet int) {
	if !e.active {
		return
	}
	if fired {
		e.quiet = 0
		return
	}
	if e.quiet < math.MaxUint16 {
		e.quiet++
	}
	if int(e.quiet) >= quiet {
		e.active, e.quiet = false, 0
	}
}

// SeriesScorer runs the volume model over one series, one observation at a time, with
// the episode rule applied: it is the per-observation scorer of the spike and
// sustained detectors (both directions), as used by cmd/nab.
type SeriesScorer struct {
	params ModelParams
	model  Model
	ep     episode
}

// NewSeriesScorer returns a scorer with the given parameters.
func NewSeriesScorer(p ModelParams) *SeriesScorer { return &SeriesScorer{params: p} }

// Observe scores x observed at t (only t's hour of day, day type and distance from
// the first observation matter, so repeated or backward timestamps are harmless),
// learns it, and returns its anomaly score in [0,1]. The score is ≥ 0.5 exactly when
// the observation starts a new episode; inside an episode scores are halved.
func (s *SeriesScorer) Observe(t time.Time, x float64) float64 {
	sl := SlotOf(t)
	sc := s.model.Score(&s.params, x, sl)
	v := sc.Value
	fired := v >= 0.5
	out := v
	if s.ep.active {
		out = v / 2
		s.ep.observe(fired, s.params.Quiet)
	} else if fired {
		s.ep.start()
	}
	s.model.Update(&s.params, x, sl)
	return out
}
