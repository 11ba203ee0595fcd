package telemetry

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// testEvent is event number i; Bytes carries i so deliveries can be checked one by one.
func testEvent(i int) Event {
	return Event{
		Time:   time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		Vendor: []string{"mailer", "crm", "billing"}[i%3], Credential: "cred-" + fmt.Sprint(i%5),
		Dst: "203.0.113.7", DstPort: 443, Bytes: int64(i), Records: 1, Sensor: "gw-1",
	}
}

// collector is a Handler that records the Bytes of every event handed to it.
type collector struct {
	mu    sync.Mutex
	seen  map[int64]int // Bytes → times handed on
	calls int
	fail  func(call int, batch []Event) error
}

func newCollector() *collector { return &collector{seen: map[int64]int{}} }

func (c *collector) Handle(_ context.Context, batch []Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.fail != nil {
		if err := c.fail(c.calls, batch); err != nil {
			n := HandledCount(err, len(batch))
			for _, e := range batch[:n] {
				c.seen[e.Bytes]++
			}
			return err
		}
	}
	for _, e := range batch {
		c.seen[e.Bytes]++
	}
	return nil
}

func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *collector) count(b int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[b]
}
