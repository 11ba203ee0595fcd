package incidents

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// StormSettings bounds how many distinct vendors may escalate within a window before
// automation stops (requirement G7): that many at once is an attack on us, or a bug.
type StormSettings struct {
	// Vendors is the number of distinct vendors escalating within Window that makes a
	// storm. Default 10; negative disables the guard.
	Vendors int `yaml:"vendors"`
	// Window is the sliding window, in detection time. Default 5m.
	Window time.Duration `yaml:"window"`
}

// StormGuard watches escalations across vendors and says when a storm starts. It is
// safe for concurrent use.
type StormGuard struct {
	s StormSettings

	mu        sync.Mutex
	escalated map[string]time.Time // vendor → last escalation
	storming  bool
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

// Escalated records an escalation of vendor at now. When it starts a storm (the number
// of vendors escalating within the window reaches the bound, and no storm was on), it
// returns the vendors involved, sorted; otherwise nil. A storm ends when the window holds
// fewer vendors again.
func (g *StormGuard) Escalated(vendor string, now time.Time) []string {
	if g.s.Vendors < 0 {
		return nil
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
	if len(g.escalated) < g.s.Vendors {
		g.storming = false
		return nil
	}
	if g.storming {
		return nil
	}
	g.storming = true
	return slices.Sorted(maps.Keys(g.escalated))
}
