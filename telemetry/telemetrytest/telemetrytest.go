// Package telemetrytest helps test telemetry sources and handlers the way Killswitch
// tests its own: numbered events whose byte count says which one they are, a Handler
// that records what it was handed (and fails on demand), and a realistic event corpus.
package telemetrytest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// Event returns event number i: three vendors, five credentials, one millisecond apart,
// with Bytes = i so that deliveries can be checked one by one.
func Event(i int) telemetry.Event {
	return telemetry.Event{
		Time:   time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		Vendor: []string{"mailer", "crm", "billing"}[i%3], Credential: "cred-" + fmt.Sprint(i%5),
		Dst: "203.0.113.7", DstPort: 443, Bytes: int64(i), Records: 1, Sensor: "gw-1",
	}
}

// CorpusEvent returns a realistic event: 20 vendors with 3 credentials each, 500
// destinations, 4 sensors, time moving forward with i.
func CorpusEvent(r *rand.Rand, i int) telemetry.Event {
	v := r.IntN(20)
	return telemetry.Event{
		Time:       time.Date(2026, 2, 5, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 37 * time.Millisecond),
		Vendor:     fmt.Sprintf("vendor-%02d", v),
		Credential: fmt.Sprintf("vendor-%02d-key-%d", v, r.IntN(3)),
		Dst:        fmt.Sprintf("203.0.%d.%d", r.IntN(2)+113, r.IntN(250)),
		DstPort:    443,
		Bytes:      r.Int64N(1 << 20),
		Records:    r.Int64N(100),
		Src:        fmt.Sprintf("10.0.%d.%d", r.IntN(4), r.IntN(250)),
		Protocol:   "https",
		Sensor:     fmt.Sprintf("egress-gw-%d", r.IntN(4)),
	}
}

// Collector is a telemetry.Handler that records the Bytes of every event handed on to
// it. It is safe for concurrent use.
type Collector struct {
	// Fail, when set, is asked on every call (numbered from 1) whether to fail the
	// batch; a *telemetry.PartialError counts the events it says were handed on.
	Fail func(call int, batch []telemetry.Event) error

	mu    sync.Mutex
	seen  map[int64]int // Bytes → times handed on
	calls int
}

// NewCollector returns an empty Collector.
func NewCollector() *Collector { return &Collector{seen: map[int64]int{}} }

// Handle implements telemetry.Handler.
func (c *Collector) Handle(_ context.Context, batch []telemetry.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	n := len(batch)
	var err error
	if c.Fail != nil {
		if err = c.Fail(c.calls, batch); err != nil {
			n = telemetry.HandledCount(err, len(batch))
		}
	}
	for _, e := range batch[:n] {
		c.seen[e.Bytes]++
	}
	return err
}

// Distinct returns how many different events were handed on.
func (c *Collector) Distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// Count returns how many times the event with Bytes b was handed on.
func (c *Collector) Count(b int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[b]
}
