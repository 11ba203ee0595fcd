// Package scenario generates realistic, labelled egress telemetry, deterministically from
// a seed: many vendors with daily and weekly seasonality, a nightly batch at the same hour
// every day, holidays (a fleet-wide dip on given days), noise, and injected attacks (smash-and-grab, exfiltration to a new
// destination, low-and-slow at night, a dormant credential waking up).
//
// The same Config always yields the same events in the same order, so tests, the demo,
// benchmarks and tabletop exercises can rely on it.
package scenario

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// AttackKind names a kind of injected attack.
type AttackKind string

// The attack kinds.
const (
	// SmashAndGrab is a short burst of many times the normal volume.
	SmashAndGrab AttackKind = "smash_and_grab"
	// NewDestination is exfiltration at a modest rate to a destination never used before.
	NewDestination AttackKind = "new_destination"
	// LowAndSlow is a few times the normal rate for hours: at night for a scenario
	// that starts at midnight (every attack's time of day counts from Start's).
	LowAndSlow AttackKind = "low_and_slow"
	// DormantWakeup is a credential idle for more than a week starting to move data.
	DormantWakeup AttackKind = "dormant_wakeup"
)

// AttackKinds lists every attack kind.
var AttackKinds = [...]AttackKind{SmashAndGrab, NewDestination, LowAndSlow, DormantWakeup}

// Attack is a labelled attack: the ground truth a detector is judged against.
type Attack struct {
	Kind       AttackKind `json:"kind"`
	Vendor     string     `json:"vendor"`
	Credential string     `json:"credential"`
	// Destination is where the attack sends data.
	Destination string    `json:"destination"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	// Bytes is the total the attack sent (on top of normal traffic).
	Bytes int64 `json:"bytes"`
}

// Config describes a scenario. Zero values take the documented defaults.
type Config struct {
	// Seed makes the scenario deterministic.
	Seed uint64
	// Start is the first instant (truncated to the hour). Default 2026-02-02T00:00:00Z (a Monday).
	// The attacks' times of day count from it: a start at midnight puts the
	// low-and-slow at 22:00, a start at noon at 10:00, in the busiest hours.
	Start time.Time
	// Days of telemetry. Default 14.
	Days int
	// Vendors is the number of vendors. Default 8.
	Vendors int
	// CredentialsPerVendor is the number of active credentials per vendor. Default 2.
	CredentialsPerVendor int
	// EventsPerMinute is the mean event rate per credential at the daily peak. Default 6.
	EventsPerMinute float64
	// BytesPerMinute is the mean volume per credential at the daily peak. Default 2 MiB.
	BytesPerMinute float64
	// Attacks is the number of attacks of each kind to inject, on distinct vendors,
	// in the second half of the scenario (a dormant wake-up needs Days ≥ 10). Default 1;
	// -1 injects none.
	Attacks int
	// Sensors is the number of egress sensors. Default 2.
	Sensors int
	// ForgedTimes injects, at the start of the minute one day before each attack,
	// three events with forged times — the attacked credential dated 2099 and 1971, and
	// a credential of its vendor never seen before dated 1971 — what an attacker who can
	// publish one message sends to blind the detectors before striking. They are not
	// attacks (Attacks does not list them): a replay must refuse them and still catch
	// every attack.
	ForgedTimes bool
	// Holidays are days, counted from Start (0 is the first day, 24 hours from
	// Start), on which the whole fleet's normal traffic dips to HolidayFactor of its
	// usual level, then returns the next day: what a public holiday, or a fleet-wide
	// outage, looks like. Attacks are not affected.
	Holidays []int
	// HolidayFactor is the traffic level on a holiday. Default 0.3.
	HolidayFactor float64
	// FleetShifts are lasting steps of the whole fleet's normal traffic: from each
	// shift's instant on, every vendor's level is multiplied by its Factor (a network
	// change, a new sensor placement, a billing change at a provider). Attacks are not
	// affected. Without shifts the recordings are unchanged.
	FleetShifts []FleetShift
}

// FleetShift is a lasting, fleet-wide step of the normal traffic level.
type FleetShift struct {
	// At is when the step happens, counted from Start (rounded down to the minute).
	At time.Duration
	// Factor multiplies every vendor's normal level from At on (> 0).
	Factor float64
}

// ParseFleetShift parses DAY:HOUR:FACTOR (day counted from 0, hour 0–23, factor > 0),
// the form `killswitch generate --fleet-shift` takes.
func ParseFleetShift(s string) (FleetShift, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return FleetShift{}, fmt.Errorf("fleet shift %q: want DAY:HOUR:FACTOR", s)
	}
	day, err1 := strconv.Atoi(parts[0])
	hour, err2 := strconv.Atoi(parts[1])
	factor, err3 := strconv.ParseFloat(parts[2], 64)
	switch {
	case err1 != nil || day < 0:
		return FleetShift{}, fmt.Errorf("fleet shift %q: day %q: want a day number from 0", s, parts[0])
	case err2 != nil || hour < 0 || hour > 23:
		return FleetShift{}, fmt.Errorf("fleet shift %q: hour %q: want 0 to 23", s, parts[1])
	case err3 != nil || !(factor > 0) || math.IsInf(factor, 0):
		return FleetShift{}, fmt.Errorf("fleet shift %q: factor %q: want a number above 0", s, parts[2])
	}
	return FleetShift{At: time.Duration(day)*24*time.Hour + time.Duration(hour)*time.Hour, Factor: factor}, nil
}

// shiftAt returns the product of the factors of the fleet shifts at or before minute m.
func (c *Config) shiftAt(m int) float64 {
	f := 1.0
	for _, s := range c.FleetShifts {
		if time.Duration(m)*time.Minute >= s.At.Truncate(time.Minute) && s.Factor > 0 {
			f *= s.Factor
		}
	}
	return f
}

func (c *Config) defaults() {
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	}
	c.Start = c.Start.UTC().Truncate(time.Hour)
	if c.Days <= 0 {
		c.Days = 14
	}
	if c.Vendors <= 0 {
		c.Vendors = 8
	}
	if c.CredentialsPerVendor <= 0 {
		c.CredentialsPerVendor = 2
	}
	if c.EventsPerMinute <= 0 {
		c.EventsPerMinute = 6
	}
	if c.BytesPerMinute <= 0 {
		c.BytesPerMinute = 2 << 20
	}
	if c.Attacks == 0 {
		c.Attacks = 1
	}
	if c.Sensors <= 0 {
		c.Sensors = 2
	}
	if c.HolidayFactor <= 0 {
		c.HolidayFactor = 0.3
	}
}

// holiday reports whether minute m of the scenario falls on one of its holidays.
func (c *Config) holiday(m int) bool {
	return slices.Contains(c.Holidays, m/1440)
}

// vendorNames are the first vendor names; more are numbered.
var vendorNames = [...]string{"mailer", "crm", "payroll", "analytics", "support", "cdn", "backup", "billing"}

// stream is one credential's normal traffic model.
type stream struct {
	vendor, cred string
	dsts         []string
	scale        float64 // share of the peak rate and volume
	peakHour     float64 // hour of the daily peak
	weekend      float64 // weekend factor
	batchHour    int     // hour of the nightly batch, -1 for none
	batchFactor  float64
	dormantUntil time.Time // no traffic before this (zero: always active)
	firstUse     time.Time // a single early use of a dormant credential
}

// Scenario is a generated scenario: call Events to stream it.
type Scenario struct {
	cfg     Config
	streams []stream
	attacks []Attack
}

// New lays out a scenario: vendors, credentials, their habits and the attacks.
func New(cfg Config) *Scenario {
	cfg.defaults()
	r := rand.New(rand.NewPCG(cfg.Seed, 0x6b696c6c))
	s := &Scenario{cfg: cfg}
	for v := range cfg.Vendors {
		vendor := fmt.Sprintf("vendor-%02d", v)
		if v < len(vendorNames) {
			vendor = vendorNames[v]
		}
		batch := -1
		if v%2 == 0 {
			batch = 1 + r.IntN(4) // a nightly batch between 01:00 and 04:00
		}
		for c := range cfg.CredentialsPerVendor {
			st := stream{
				vendor:      vendor,
				cred:        fmt.Sprintf("%s-key-%d", vendor, c+1),
				scale:       0.3 + 1.4*r.Float64(),
				peakHour:    10 + 6*r.Float64(),
				weekend:     0.2 + 0.4*r.Float64(),
				batchHour:   batch,
				batchFactor: 4 + 6*r.Float64(),
			}
			for d := range 1 + r.IntN(3) {
				st.dsts = append(st.dsts, fmt.Sprintf("198.51.%d.%d", 100+v, 10+10*c+d))
			}
			s.streams = append(s.streams, st)
		}
	}
	if cfg.Attacks > 0 {
		s.injectAttacks(r)
	}
	return s
}

// injectAttacks places cfg.Attacks attacks of each kind in the second half of the scenario.
func (s *Scenario) injectAttacks(r *rand.Rand) {
	cfg := s.cfg
	day := func(minDay int) time.Time {
		lo := max(minDay, cfg.Days/2)
		d := lo + r.IntN(max(1, cfg.Days-lo))
		return cfg.Start.Add(time.Duration(d) * 24 * time.Hour)
	}
	vendorIdx := 0
	next := func() int {
		i := vendorIdx % cfg.Vendors
		vendorIdx++
		return i * cfg.CredentialsPerVendor
	}
	for range cfg.Attacks {
		for _, kind := range AttackKinds {
			si := next()
			st := &s.streams[si]
			a := Attack{Kind: kind, Vendor: st.vendor, Credential: st.cred, Destination: st.dsts[0]}
			perMin := cfg.BytesPerMinute * st.scale
			switch kind {
			case SmashAndGrab:
				// mid-morning, 10 minutes at ~40 times the peak volume
				a.Start = day(0).Add(time.Duration(9*60+r.IntN(180)) * time.Minute)
				a.End = a.Start.Add(10 * time.Minute)
				a.Bytes = int64(40 * perMin * 10)
			case NewDestination:
				a.Destination = fmt.Sprintf("203.0.113.%d", 10+r.IntN(200))
				a.Start = day(0).Add(time.Duration(13*60+r.IntN(120)) * time.Minute)
				a.End = a.Start.Add(30 * time.Minute)
				a.Bytes = int64(0.5 * perMin * 30)
			case LowAndSlow:
				// 22:00 to 05:00 the next day (for a start at midnight) at ~1.5 times the
				// daytime peak rate, far above the night-time baseline yet small next to the
				// daily total
				a.Start = day(0).Add(22 * time.Hour)
				a.End = a.Start.Add(7 * time.Hour)
				a.Bytes = int64(1.5 * perMin * 7 * 60)
			case DormantWakeup:
				if cfg.Days < 10 {
					continue // a credential cannot have been idle for a week yet
				}
				// a spare credential used once at the very start, then idle for over a week
				dormant := stream{
					vendor: st.vendor, cred: st.vendor + "-breakglass", dsts: st.dsts[:1],
					firstUse: cfg.Start.Add(time.Hour),
				}
				a.Credential = dormant.cred
				d := day(0)
				if earliest := cfg.Start.Add(8 * 24 * time.Hour); d.Before(earliest) {
					d = earliest
				}
				a.Start = d.Add(time.Duration(8*60+r.IntN(600)) * time.Minute)
				a.End = a.Start.Add(20 * time.Minute)
				a.Bytes = int64(perMin * 20)
				dormant.dormantUntil = a.End.Add(24 * time.Hour * 365)
				s.streams = append(s.streams, dormant)
			}
			s.attacks = append(s.attacks, a)
		}
	}
	slices.SortFunc(s.attacks, func(a, b Attack) int { return a.Start.Compare(b.Start) })
}

// Attacks returns the labelled attacks, ordered by start.
func (s *Scenario) Attacks() []Attack { return slices.Clone(s.attacks) }

// Start returns the first instant of the scenario.
func (s *Scenario) Start() time.Time { return s.cfg.Start }

// End returns the instant after the last event.
func (s *Scenario) End() time.Time {
	return s.cfg.Start.Add(time.Duration(s.cfg.Days) * 24 * time.Hour)
}

// level is a stream's normal volume multiplier at minute t (1 at the weekday peak).
func (st *stream) level(t time.Time) float64 {
	h := float64(t.Hour()) + float64(t.Minute())/60
	d := math.Abs(h - st.peakHour)
	d = math.Min(d, 24-d)
	l := 0.08 + 0.92*math.Exp(-d*d/(2*3.5*3.5)) // a smooth day, a quiet night
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		l *= st.weekend
	}
	if st.batchHour >= 0 && t.Hour() == st.batchHour && t.Minute() < 20 {
		l += st.batchFactor * 0.3 // the nightly batch: 20 minutes at a fixed hour
	}
	return l
}

// Events calls emit for every event of the scenario in event-time order (within each
// minute events are ordered by time; the clock never goes back). The Event passed to
// emit is reused: copy it to keep it. Returning false from emit stops the generation.
func (s *Scenario) Events(emit func(*telemetry.Event) bool) {
	cfg := s.cfg
	r := rand.New(rand.NewPCG(cfg.Seed, 0x65766e74))
	minutes := cfg.Days * 24 * 60
	type pending struct {
		off int64 // nanoseconds into the minute
		ev  telemetry.Event
	}
	var batch []pending
	sensors := make([]string, cfg.Sensors)
	for i := range sensors {
		sensors[i] = fmt.Sprintf("egress-gw-%d", i+1)
	}
	dip := 1.0
	for m := range minutes {
		t := cfg.Start.Add(time.Duration(m) * time.Minute)
		if m%1440 == 0 {
			dip = 1
			if cfg.holiday(m) {
				dip = cfg.HolidayFactor
			}
		}
		shift := cfg.shiftAt(m)
		batch = batch[:0]
		add := func(st *stream, dst string, bytes float64, n int) {
			if n <= 0 || bytes <= 0 {
				return
			}
			per := bytes / float64(n)
			for range n {
				b := int64(per * math.Exp(0.35*r.NormFloat64()-0.06))
				batch = append(batch, pending{off: r.Int64N(int64(time.Minute)), ev: telemetry.Event{
					Vendor: st.vendor, Credential: st.cred, Dst: dst, DstPort: 443,
					Bytes: max(b, 1), Records: 1 + b/4096, Protocol: "tcp",
					Sensor: sensors[(len(st.vendor)+n)%len(sensors)],
				}})
			}
		}
		for i := range s.streams {
			st := &s.streams[i]
			if !st.dormantUntil.IsZero() {
				if t.Equal(st.firstUse) {
					add(st, st.dsts[0], cfg.BytesPerMinute, 3)
				}
				continue
			}
			l := st.level(t) * st.scale * dip * shift
			n := poisson(r, cfg.EventsPerMinute*l)
			add(st, st.dsts[r.IntN(len(st.dsts))], cfg.BytesPerMinute*l*float64(n)/math.Max(cfg.EventsPerMinute*l, 1e-9), n)
		}
		for _, a := range s.attacks {
			if t.Before(a.Start) || !t.Before(a.End) {
				continue
			}
			mins := a.End.Sub(a.Start).Minutes()
			st := s.streamOf(a.Vendor, a.Credential)
			add(st, a.Destination, float64(a.Bytes)/mins, max(1, int(cfg.EventsPerMinute)))
		}
		if cfg.ForgedTimes {
			for _, a := range s.attacks {
				if !t.Equal(a.Start.Add(-24 * time.Hour).Truncate(time.Minute)) {
					continue
				}
				for _, f := range forged(a) {
					if !emit(&f) {
						return
					}
				}
			}
		}
		slices.SortStableFunc(batch, func(a, b pending) int { return cmp.Compare(a.off, b.off) })
		for i := range batch {
			ev := batch[i].ev
			ev.Time = t.Add(time.Duration(batch[i].off)).Truncate(time.Millisecond)
			if !emit(&ev) {
				return
			}
		}
	}
}

// forged returns the events with forged times injected before attack a.
func forged(a Attack) []telemetry.Event {
	future, past := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC)
	return []telemetry.Event{
		{Time: future, Vendor: a.Vendor, Credential: a.Credential, Dst: "198.51.100.1", Bytes: 1},
		{Time: past, Vendor: a.Vendor, Credential: a.Credential, Dst: "198.51.100.1", Bytes: 1},
		{Time: past, Vendor: a.Vendor, Credential: a.Vendor + "-never-seen", Dst: "198.51.100.1", Bytes: 1},
	}
}

func (s *Scenario) streamOf(vendor, cred string) *stream {
	for i := range s.streams {
		if s.streams[i].vendor == vendor && s.streams[i].cred == cred {
			return &s.streams[i]
		}
	}
	panic("scenario: attack on unknown stream " + vendor + "/" + cred)
}

// poisson draws from a Poisson distribution with mean lambda.
func poisson(r *rand.Rand, lambda float64) int {
	if lambda <= 0 {
		return 0
	}
	if lambda > 30 {
		return max(0, int(math.Round(lambda+math.Sqrt(lambda)*r.NormFloat64())))
	}
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= r.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// Inventory returns a vendor inventory for the scenario's vendors: every credential is a
// Vault token known by a made-up accessor (good for replays that plan actions; a demo
// with a real Vault builds its own). Each vendor also holds a protected break-glass
// token that never appears in telemetry, and an ACL policy that can be quarantined.
func (s *Scenario) Inventory() killswitch.Inventory {
	inv := killswitch.Inventory{}
	for _, st := range s.streams {
		v, ok := inv[st.vendor]
		if !ok {
			v = killswitch.Vendor{Owner: "team-" + st.vendor, Credentials: map[string]killswitch.Credential{
				st.vendor + "-root":   {Kind: killswitch.CredTokenAccessor, Accessor: "acc-" + st.vendor + "-root", Protected: true},
				st.vendor + "-policy": {Kind: killswitch.CredPolicy, Policy: "vendor-" + st.vendor},
			}}
		}
		v.Credentials[st.cred] = killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: "acc-" + st.cred}
		inv[st.vendor] = v
	}
	return inv
}
