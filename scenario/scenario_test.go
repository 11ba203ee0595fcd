package scenario

import (
	"hash/fnv"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

func digest(s *Scenario) (uint64, int) {
	h := fnv.New64a()
	n := 0
	var last time.Time
	s.Events(func(e *telemetry.Event) bool {
		n++
		if e.Time.Before(last) {
			panic("event time went backwards")
		}
		last = e.Time
		h.Write([]byte(e.Time.Format(time.RFC3339Nano) + e.Vendor + e.Credential + e.Dst))
		var b [8]byte
		for i := range b {
			b[i] = byte(e.Bytes >> (8 * i))
		}
		h.Write(b[:])
		return true
	})
	return h.Sum64(), n
}

func TestDeterministicBySeed(t *testing.T) {
	cfg := Config{Seed: 7, Days: 3, Vendors: 3}
	a, n := digest(New(cfg))
	b, m := digest(New(cfg))
	if a != b || n != m || n == 0 {
		t.Fatalf("same seed: digests %x/%x, counts %d/%d", a, b, n, m)
	}
	cfg.Seed = 8
	if c, _ := digest(New(cfg)); c == a {
		t.Fatal("different seeds gave the same scenario")
	}
}

func TestAttacksAreLabelledAndInjected(t *testing.T) {
	s := New(Config{Seed: 3, Days: 12})
	attacks := s.Attacks()
	if len(attacks) != len(AttackKinds) {
		t.Fatalf("%d attacks, want one of each of %d kinds", len(attacks), len(AttackKinds))
	}
	sent := make([]int64, len(attacks))
	s.Events(func(e *telemetry.Event) bool {
		for i, a := range attacks {
			if e.Vendor == a.Vendor && e.Credential == a.Credential && e.Dst == a.Destination &&
				!e.Time.Before(a.Start) && e.Time.Before(a.End) {
				sent[i] += e.Bytes
			}
		}
		return true
	})
	for i, a := range attacks {
		if a.Start.Before(s.Start().Add(6*24*time.Hour)) || !a.End.Before(s.End()) {
			t.Errorf("%s attack at %s..%s is outside the second half", a.Kind, a.Start, a.End)
		}
		// The labelled bytes (plus whatever normal traffic shares the destination) went out.
		if sent[i] < a.Bytes*8/10 {
			t.Errorf("%s attack: %d bytes sent in its window, labelled %d", a.Kind, sent[i], a.Bytes)
		}
	}
}

func TestSeasonality(t *testing.T) {
	s := New(Config{Seed: 1, Days: 7, Vendors: 2, Attacks: -1})
	var byHour [24]int64
	var weekday, weekend int64
	s.Events(func(e *telemetry.Event) bool {
		byHour[e.Time.Hour()] += e.Bytes
		if wd := e.Time.Weekday(); wd == time.Saturday || wd == time.Sunday {
			weekend += e.Bytes
		} else {
			weekday += e.Bytes
		}
		return true
	})
	if byHour[13] < 3*byHour[23] {
		t.Errorf("afternoon %d not well above late evening %d", byHour[13], byHour[23])
	}
	if weekday/5 < weekend/2*3/2 {
		t.Errorf("weekday mean %d not above weekend mean %d", weekday/5, weekend/2)
	}
}

// ForgedTimes adds exactly three forged events per attack, a day before it, and changes
// nothing else: the same events otherwise, the same attacks.
func TestForgedTimes(t *testing.T) {
	cfg := Config{Seed: 3, Days: 10, Vendors: 4, EventsPerMinute: 1}
	var clean, forgedEvs []telemetry.Event
	New(cfg).Events(func(e *telemetry.Event) bool { clean = append(clean, *e); return true })
	cfg.ForgedTimes = true
	sc := New(cfg)
	sc.Events(func(e *telemetry.Event) bool { forgedEvs = append(forgedEvs, *e); return true })
	if len(sc.Attacks()) == 0 || len(forgedEvs) != len(clean)+3*len(sc.Attacks()) {
		t.Fatalf("%d events with forged times, %d without, %d attacks", len(forgedEvs), len(clean), len(sc.Attacks()))
	}
	var odd []telemetry.Event
	i := 0
	for _, e := range forgedEvs {
		if i < len(clean) && e == clean[i] {
			i++
			continue
		}
		odd = append(odd, e)
	}
	if i != len(clean) || len(odd) != 3*len(sc.Attacks()) {
		t.Fatalf("the clean events are not all there in order (%d of %d)", i, len(clean))
	}
	for _, e := range odd {
		if y := e.Time.Year(); y != 2099 && y != 1971 {
			t.Fatalf("injected event %+v has a real time", e)
		}
	}
}

// TestHolidays: on a holiday the whole fleet's normal traffic dips to HolidayFactor of
// an ordinary day's, and returns the next day; without holidays nothing changes.
func TestHolidays(t *testing.T) {
	perDay := func(cfg Config) []float64 {
		out := make([]float64, cfg.Days)
		start := New(cfg).Start()
		New(cfg).Events(func(ev *telemetry.Event) bool {
			out[int(ev.Time.Sub(start)/(24*time.Hour))] += float64(ev.Bytes)
			return true
		})
		return out
	}
	base := Config{Seed: 7, Days: 4, Vendors: 3, Attacks: -1}
	plain := perDay(base)
	hol := base
	hol.Holidays = []int{1}
	dipped := perDay(hol)
	cases := []struct {
		day    int
		lo, hi float64
	}{
		{0, 0.99, 1.01}, {1, 0.2, 0.4}, {2, 0.8, 1.25},
	}
	for _, tc := range cases {
		if r := dipped[tc.day] / plain[tc.day]; r < tc.lo || r > tc.hi {
			t.Errorf("day %d: %.2f of the volume without holidays, want %.2f–%.2f", tc.day, r, tc.lo, tc.hi)
		}
	}
}

// TestFleetShift: from a fleet shift on, every vendor's normal traffic is multiplied by
// its factor; before it, and without shifts, nothing changes.
func TestFleetShift(t *testing.T) {
	perVendorDay := func(cfg Config) map[string][]float64 {
		out := map[string][]float64{}
		sc := New(cfg)
		sc.Events(func(ev *telemetry.Event) bool {
			if out[ev.Vendor] == nil {
				out[ev.Vendor] = make([]float64, cfg.Days)
			}
			out[ev.Vendor][int(ev.Time.Sub(sc.Start())/(24*time.Hour))] += float64(ev.Bytes)
			return true
		})
		return out
	}
	base := Config{Seed: 7, Days: 3, Vendors: 3, Attacks: -1}
	plain := perVendorDay(base)
	shifted := base
	shifted.FleetShifts = []FleetShift{{At: 24 * time.Hour, Factor: 3}}
	got := perVendorDay(shifted)
	for vendor, days := range plain {
		cases := []struct {
			day    int
			lo, hi float64
		}{{0, 1, 1}, {1, 2.5, 3.5}, {2, 2.5, 3.5}}
		for _, tc := range cases {
			if r := got[vendor][tc.day] / days[tc.day]; r < tc.lo || r > tc.hi {
				t.Errorf("%s day %d: %.2f× the volume without the shift, want %.2f–%.2f", vendor, tc.day, r, tc.lo, tc.hi)
			}
		}
	}
}

func TestParseFleetShift(t *testing.T) {
	cases := []struct {
		in   string
		want FleetShift
		err  bool
	}{
		{in: "3:9:2.5", want: FleetShift{At: 81 * time.Hour, Factor: 2.5}},
		{in: "0:0:0.5", want: FleetShift{At: 0, Factor: 0.5}},
		{in: "3:24:2", err: true},
		{in: "-1:0:2", err: true},
		{in: "3:9:0", err: true},
		{in: "3:9", err: true},
		{in: "3:9:x", err: true},
	}
	for _, tc := range cases {
		got, err := ParseFleetShift(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseFleetShift(%q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}
