package incidents

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// StormSettings bounds how many distinct vendors may escalate within a window before
// automation holds (requirement G7): that many at once is an attack on us, or a bug.
type StormSettings struct {
	// Vendors is the number of distinct vendors that count (see StormGuard) escalating
	// within Window that makes a storm. Default 10; negative disables the guard.
	Vendors int `yaml:"vendors"`
	// Window is the sliding window, in detection time. Default 5m.
	Window time.Duration `yaml:"window"`
}

// Storm is a detection storm: the vendors involved, sorted, since when, and until when
// their destructive actions are held (the newest escalation plus the window).
type Storm struct {
	Vendors []string  `json:"vendors"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
}

// StormGuard watches escalations across vendors and says when a storm starts or grows.
// It is safe for concurrent use.
//
// Only vendors that count can make a storm: vendors of the inventory, and vendors whose
// detection says they have a history (a mature baseline; see Counts). Made-up vendor
// names, which anyone who can publish telemetry can invent by the thousand, therefore
// cannot trip it; and a storm holds the vendors involved, not the fleet, so it is never
// a remote pause button.
type StormGuard struct {
	s StormSettings

	mu        sync.Mutex
	escalated map[string]time.Time // counted vendor → last escalation
	storm     Storm                // the current storm; no vendors when none is on
}

// NewStormGuard returns a StormGuard; zero settings take their defaults.
func NewStormGuard(s StormSettings) *StormGuard {
	if s.Vendors == 0 {
		s.Vendors = 10
	}
	if s.Window <= 0 {
		s.Window = 5 * time.Minute
	}
	return &StormGuard{s: s, escalated: make(map[string]time.Time)}
}

// Escalated records an escalation of vendor at now; counts says whether the vendor
// counts (it is in the inventory or has a mature baseline). It returns the storm and
// true when a storm starts, when a vendor joins it, or when a vendor of it escalates
// again (its hold is extended); otherwise false. A storm ends when the window holds
// fewer counted vendors than the bound; a vendor already held stays held until the
// storm's Until.
func (g *StormGuard) Escalated(vendor string, counts bool, now time.Time) (Storm, bool) {
	if g.s.Vendors < 0 || !counts {
		return Storm{}, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.escalated[vendor]; !ok || now.After(t) {
		g.escalated[vendor] = now
	}
	for v, t := range g.escalated {
		if now.Sub(t) > g.s.Window {
			delete(g.escalated, v)
		}
	}
	on := len(g.storm.Vendors) > 0 && now.Before(g.storm.Until)
	if len(g.escalated) < g.s.Vendors && !(on && slices.Contains(g.storm.Vendors, vendor)) {
		if !on {
			g.storm = Storm{}
		}
		return Storm{}, false
	}
	if !on {
		g.storm = Storm{Since: now}
	}
	vendors := slices.Sorted(maps.Keys(g.escalated))
	for _, v := range g.storm.Vendors {
		if !slices.Contains(vendors, v) {
			vendors = append(vendors, v)
		}
	}
	slices.Sort(vendors)
	g.storm.Vendors = vendors
	if until := now.Add(g.s.Window); until.After(g.storm.Until) {
		g.storm.Until = until
	}
	return Storm{Vendors: slices.Clone(g.storm.Vendors), Since: g.storm.Since, Until: g.storm.Until}, true
}

// Current returns the storm on at now, if any.
func (g *StormGuard) Current(now time.Time) (Storm, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.storm.Vendors) == 0 || !now.Before(g.storm.Until) {
		return Storm{}, false
	}
	return Storm{Vendors: slices.Clone(g.storm.Vendors), Since: g.storm.Since, Until: g.storm.Until}, true
}
