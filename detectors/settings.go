package detectors

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
)

// Settings configures the streaming detectors (the `detectors:` section of the
// configuration). Zero values mean the documented default.
type Settings struct {
	// Interval is the bucket width for volume detectors (spike, sustained). Default 5m.
	Interval time.Duration `yaml:"interval"`
	// AllowedLateness is how far behind the watermark an event may arrive and still be
	// counted in its bucket. Default 1m.
	AllowedLateness time.Duration `yaml:"allowed_lateness"`
	// Sensitivity scales every detector: 2 makes them twice as eager, 0.5 half. Default 1.
	Sensitivity float64 `yaml:"sensitivity"`
	// Disable lists detector kinds turned off for everyone.
	Disable []string `yaml:"disable"`
	// LearningPeriod is how long a key is observed before the spike, sustained and new
	// destination detectors may fire for it. Default 24h.
	LearningPeriod time.Duration `yaml:"learning_period"`
	// DormantAfter is how long a credential must be idle to count as dormant. Default 168h.
	DormantAfter time.Duration `yaml:"dormant_after"`
	// SilenceAfter is how long a vendor may send nothing before a silence alert. Default 30m.
	SilenceAfter time.Duration `yaml:"silence_after"`
	// MinBytes is the smallest interval volume a spike may be raised for. Default 1 MiB.
	MinBytes killswitch.ByteSize `yaml:"min_bytes"`
	// MaxObservedGap is the most one gap between two consecutive events of a vendor (or
	// a sensor) adds to its observed history, which the learning period, dormancy and
	// the silence detector's learning count: a vendor silent for longer (or an event
	// dated decades before the next) adds only this much. Default 1h; never less than
	// Interval.
	MaxObservedGap time.Duration `yaml:"max_observed_gap"`
	// MaxClockJump is the most one event may move a vendor's clock ahead of the
	// engine's reference: the time of the last Tick (the service's clock) or, before
	// any Tick, the latest event time of the whole engine. An event further ahead than
	// that, and further ahead than its own vendor's latest event by more than the
	// bound, is refused (Counters.ClockRejected) and changes nothing. Default 10m: the
	// door's default max_future_skew (5m) plus the time between two Ticks.
	MaxClockJump time.Duration `yaml:"max_clock_jump"`
}

// Config is what an engine is built from: the settings and the vendor inventory (caps,
// allow-lists, expected-idle credentials, per-vendor sensitivity and disabled kinds).
// The zero Config works: every vendor and credential seen in telemetry gets the default
// detectors.
type Config struct {
	Settings
	// Vendors is the vendor inventory.
	Vendors killswitch.Inventory
}

// Validate checks the settings, and the detector kinds the inventory's vendors disable,
// returning every problem found, each naming its field and wrapping killswitch.ErrInvalid.
func (s Settings) Validate(vendors killswitch.Inventory) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{killswitch.ErrInvalid}, args...)...))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"detectors.interval", s.Interval}, {"detectors.allowed_lateness", s.AllowedLateness},
		{"detectors.learning_period", s.LearningPeriod}, {"detectors.dormant_after", s.DormantAfter},
		{"detectors.silence_after", s.SilenceAfter}, {"detectors.max_observed_gap", s.MaxObservedGap},
		{"detectors.max_clock_jump", s.MaxClockJump},
	} {
		if f.v < 0 {
			bad("%s: must not be negative, got %s", f.name, f.v)
		}
	}
	if s.Interval != 0 && s.Interval < time.Second {
		bad("detectors.interval: must be at least 1s, got %s", s.Interval)
	}
	if s.Sensitivity < 0 {
		bad("detectors.sensitivity: must not be negative, got %g", s.Sensitivity)
	}
	checkKinds := func(field string, kinds []string) {
		for _, k := range kinds {
			if kindBit(Kind(k)) == 0 {
				bad("%s: unknown detector kind %q (known: cap, spike, sustained, new_destination, dormant_credential, silence)", field, k)
			}
		}
	}
	checkKinds("detectors.disable", s.Disable)
	for _, name := range slices.Sorted(maps.Keys(vendors)) {
		checkKinds("vendors."+name+".disable", vendors[name].Disable)
	}
	return errors.Join(errs...)
}

// Defaults applied when a Settings field is zero.
const (
	// DefaultInterval is the bucket width of the volume detectors.
	DefaultInterval = 5 * time.Minute
	// DefaultAllowedLateness is how far behind its vendor's newest event an event may
	// arrive and still be counted in its own bucket.
	DefaultAllowedLateness = time.Minute
	// DefaultLearningPeriod is how long a key (or vendor) is observed before the spike,
	// sustained, new-destination and silence detectors may fire for it.
	DefaultLearningPeriod = 24 * time.Hour
	// DefaultDormantAfter is how long a credential must be idle to count as dormant.
	DefaultDormantAfter = 168 * time.Hour
	// DefaultSilenceAfter is how long a regular source may send nothing before a
	// silence alert.
	DefaultSilenceAfter = 30 * time.Minute
	// DefaultMinBytes is the smallest bucket volume a spike may be raised for.
	DefaultMinBytes = 1 << 20
	// DefaultMaxObservedGap is the most one gap between two consecutive events of a
	// vendor or sensor adds to its observed history.
	DefaultMaxObservedGap = time.Hour
	// DefaultMaxClockJump is how far one event may move a vendor's clock ahead of the
	// engine's reference (the last Tick, else the engine's latest event time).
	DefaultMaxClockJump = 10 * time.Minute
)

// confirmJump is the number of consecutive refused events, each within MaxClockJump
// of the first, that move the clock of an engine that has never been ticked (an
// engine driven by event time alone, with no other reference, e.g. after every
// vendor of the shard was silent).
const confirmJump = 3

// kindMask is a set of detector kinds.
type kindMask uint8

func kindBit(k Kind) kindMask {
	for i, kk := range Kinds {
		if kk == k {
			return 1 << i
		}
	}
	return 0
}

func (m kindMask) has(k Kind) bool { return m&kindBit(k) != 0 }

func maskOf(kinds []string) (kindMask, error) {
	var m kindMask
	for _, s := range kinds {
		b := kindBit(Kind(s))
		if b == 0 {
			return 0, fmt.Errorf("%w: unknown detector kind %q", ErrConfig, s)
		}
		m |= b
	}
	return m, nil
}

// settings are the engine-wide settings, resolved from Settings with defaults.
type settings struct {
	interval     time.Duration
	lateness     time.Duration
	learning     time.Duration
	dormantAfter time.Duration
	silenceAfter time.Duration
	// maxGap is MaxObservedGap, at least one interval.
	maxGap time.Duration
	// maxJump is MaxClockJump.
	maxJump     time.Duration
	minBytes    int64
	sensitivity float64
	disabled    kindMask
	// gapFill is the most zero-volume buckets fed to a model after a key was idle.
	gapFill int
	// decayEvery is how many buckets (a week) pass between two decrements of the hour
	// envelopes.
	decayEvery int
}

func resolveSettings(d Settings) (settings, error) {
	s := settings{
		interval: d.Interval, lateness: d.AllowedLateness, learning: d.LearningPeriod,
		dormantAfter: d.DormantAfter, silenceAfter: d.SilenceAfter,
		maxGap: d.MaxObservedGap, maxJump: d.MaxClockJump,
		minBytes: int64(d.MinBytes), sensitivity: d.Sensitivity,
	}
	if s.interval == 0 {
		s.interval = DefaultInterval
	}
	if s.interval < time.Second {
		return s, fmt.Errorf("%w: interval %s is below 1s", ErrConfig, s.interval)
	}
	if s.lateness == 0 {
		s.lateness = DefaultAllowedLateness
	}
	// Per-key state keeps two open buckets, so lateness is at most one interval.
	s.lateness = min(max(s.lateness, 0), s.interval)
	if s.learning <= 0 {
		s.learning = DefaultLearningPeriod
	}
	if s.dormantAfter <= 0 {
		s.dormantAfter = DefaultDormantAfter
	}
	if s.silenceAfter <= 0 {
		s.silenceAfter = DefaultSilenceAfter
	}
	if s.maxGap <= 0 {
		s.maxGap = DefaultMaxObservedGap
	}
	s.maxGap = max(s.maxGap, s.interval)
	if s.maxJump <= 0 {
		s.maxJump = DefaultMaxClockJump
	}
	if s.minBytes <= 0 {
		s.minBytes = DefaultMinBytes
	}
	if s.sensitivity <= 0 {
		s.sensitivity = 1
	}
	var err error
	if s.disabled, err = maskOf(d.Disable); err != nil {
		return s, err
	}
	s.gapFill = int(min(24*time.Hour/s.interval, 4096))
	s.decayEvery = int(max(1, 7*24*time.Hour/s.interval))
	return s, nil
}

// warmupBuckets is the learning period in buckets.
func (s *settings) warmupBuckets() int {
	return int(max(1, s.learning/s.interval))
}

// vendorConfig is one vendor's resolved configuration. Vendors absent from the
// configuration share a default vendorConfig.
type vendorConfig struct {
	disabled kindMask
	params   ModelParams // volume model parameters with this vendor's sensitivity
	// hourMargin is how far (log2 units) above the most seen at an hour of the day a
	// spike must be: 1 (twice the volume) divided by the sensitivity.
	hourMargin float64
	caps       []capSpec
	allow      *allowList          // nil: destinations are learned
	idle       map[string]struct{} // credentials marked ExpectedIdle
}

type capSpec struct {
	credential string
	bytes      int64
	records    int64
	per        time.Duration
}

func newVendorConfig(s *settings, base ModelParams, v *killswitch.Vendor) (*vendorConfig, error) {
	vc := &vendorConfig{disabled: s.disabled}
	sens := s.sensitivity
	if v != nil && v.Sensitivity > 0 {
		sens = v.Sensitivity
	}
	vc.params = base.WithSensitivity(sens)
	vc.hourMargin = 1 / sens
	vc.params.Warmup = s.warmupBuckets()
	if v == nil {
		return vc, nil
	}
	m, err := maskOf(v.Disable)
	if err != nil {
		return nil, err
	}
	vc.disabled |= m
	for i, c := range v.Caps {
		if c.Per <= 0 || (c.Bytes <= 0 && c.Records <= 0) || c.Bytes < 0 || c.Records < 0 {
			return nil, fmt.Errorf("%w: caps[%d]: want a positive per and a byte or record limit", ErrConfig, i)
		}
		vc.caps = append(vc.caps, capSpec{credential: c.Credential, bytes: int64(c.Bytes), records: c.Records, per: c.Per})
	}
	if len(v.AllowedDestinations) > 0 {
		if vc.allow, err = parseAllowList(v.AllowedDestinations); err != nil {
			return nil, err
		}
	}
	for name, c := range v.Credentials {
		if c.ExpectedIdle {
			if vc.idle == nil {
				vc.idle = make(map[string]struct{})
			}
			vc.idle[name] = struct{}{}
		}
	}
	return vc, nil
}

// allowList is a vendor's allowed destinations, parsed once: addresses, CIDR
// prefixes, host names (case-insensitive) and "*.domain" suffixes.
type allowList struct {
	addrs    map[netip.Addr]struct{}
	prefixes []netip.Prefix
	hosts    map[string]struct{}
	suffixes []string // ".example.com"
}

func parseAllowList(entries []string) (*allowList, error) {
	a := &allowList{addrs: map[netip.Addr]struct{}{}, hosts: map[string]struct{}{}}
	for i, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
			return nil, fmt.Errorf("%w: allowed_destinations[%d] is empty", ErrConfig, i)
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("%w: allowed_destinations[%d]: %q is not a CIDR prefix: %v", ErrConfig, i, e, err)
			}
			a.prefixes = append(a.prefixes, p.Masked())
		case strings.HasPrefix(e, "*."):
			a.suffixes = append(a.suffixes, strings.ToLower(e[1:]))
		default:
			if ip, err := netip.ParseAddr(e); err == nil {
				a.addrs[ip.Unmap()] = struct{}{}
			} else {
				a.hosts[strings.ToLower(strings.TrimSuffix(e, "."))] = struct{}{}
			}
		}
	}
	return a, nil
}

// allowed reports whether dst is on the list.
func (a *allowList) allowed(dst string) bool {
	if ip, err := netip.ParseAddr(dst); err == nil {
		ip = ip.Unmap()
		if _, ok := a.addrs[ip]; ok {
			return true
		}
		for _, p := range a.prefixes {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
	h := strings.ToLower(strings.TrimSuffix(dst, "."))
	if _, ok := a.hosts[h]; ok {
		return true
	}
	for _, s := range a.suffixes {
		if strings.HasSuffix(h, s) {
			return true
		}
	}
	return false
}
