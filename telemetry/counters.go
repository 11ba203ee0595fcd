package telemetry

import (
	"maps"
	"sync/atomic"
)

// Counters count what sources did. They are safe for concurrent use and may be shared
// by several sources; the metrics layer reads them with Snapshot.
type Counters struct {
	received           atomic.Uint64
	delivered          atomic.Uint64
	acked              atomic.Uint64
	naked              atomic.Uint64
	terminated         atomic.Uint64
	handlerErrors      atomic.Uint64
	deadLettered       atomic.Uint64
	deadLetterFailures atomic.Uint64
	dropped            atomic.Uint64
	duplicates         atomic.Uint64
	fetched            atomic.Uint64
	rejected           map[Reason]*atomic.Uint64 // fixed key set, never written after NewCounters
	skipped            map[Reason]*atomic.Uint64
	otherRejected      atomic.Uint64
}

// NewCounters returns zeroed counters.
func NewCounters() *Counters {
	c := &Counters{rejected: map[Reason]*atomic.Uint64{}, skipped: map[Reason]*atomic.Uint64{}}
	for _, r := range InvalidReasons() {
		c.rejected[r] = new(atomic.Uint64)
	}
	for _, r := range SkipReasons() {
		c.skipped[r] = new(atomic.Uint64)
	}
	return c
}

// CounterSnapshot is a point-in-time copy of Counters.
type CounterSnapshot struct {
	// Received counts messages (or file lines) read, whatever became of them.
	Received uint64
	// Delivered counts events the handler accepted (returned nil for).
	Delivered uint64
	// Acked counts JetStream messages acknowledged.
	Acked uint64
	// Naked counts JetStream messages negatively acknowledged for redelivery.
	Naked uint64
	// Terminated counts JetStream messages terminated: dead-lettered and never
	// redelivered (in AckBatch mode, covered by the batch acknowledgement).
	Terminated uint64
	// Duplicates counts redeliveries of messages already done, recognized and not
	// handed on again (AckBatch mode).
	Duplicates uint64
	// Fetched counts messages the source fetched from the stream itself because they
	// held the batch acknowledgement back (AckBatch mode).
	Fetched uint64
	// HandlerErrors counts handler calls that returned an error.
	HandlerErrors uint64
	// DeadLettered counts messages published to the dead-letter subject.
	DeadLettered uint64
	// DeadLetterFailures counts dead-letter publications that failed; the message was
	// then negatively acknowledged instead of terminated, so nothing is lost.
	DeadLetterFailures uint64
	// Dropped counts events lost: on core NATS (at most once) when the handler failed
	// or the subscription fell behind.
	Dropped uint64
	// Rejected counts messages that did not decode or validate, by reason. On NATS
	// sources each was dead-lettered (or, failing that, redelivered); on files, reported.
	Rejected map[Reason]uint64
	// Skipped counts records that carried no event (ErrSkipped), by reason.
	Skipped map[Reason]uint64
}

// Snapshot copies the counters.
func (c *Counters) Snapshot() CounterSnapshot {
	s := CounterSnapshot{
		Received: c.received.Load(), Delivered: c.delivered.Load(), Acked: c.acked.Load(),
		Naked: c.naked.Load(), Terminated: c.terminated.Load(), HandlerErrors: c.handlerErrors.Load(),
		DeadLettered: c.deadLettered.Load(), DeadLetterFailures: c.deadLetterFailures.Load(),
		Dropped: c.dropped.Load(), Duplicates: c.duplicates.Load(), Fetched: c.fetched.Load(),
		Rejected: map[Reason]uint64{}, Skipped: map[Reason]uint64{},
	}
	for r, v := range c.rejected {
		if n := v.Load(); n > 0 {
			s.Rejected[r] = n
		}
	}
	if n := c.otherRejected.Load(); n > 0 {
		s.Rejected["other"] = n
	}
	for r, v := range c.skipped {
		if n := v.Load(); n > 0 {
			s.Skipped[r] = n
		}
	}
	return s
}

// Totals returns how many messages (or lines) were received and how many of them were
// rejected (did not decode or validate), without copying the per-reason counts.
func (c *Counters) Totals() (received, rejected uint64) {
	for _, v := range c.rejected {
		rejected += v.Load()
	}
	return c.received.Load(), rejected + c.otherRejected.Load()
}

// TotalRejected sums Rejected.
func (s CounterSnapshot) TotalRejected() uint64 {
	var n uint64
	for v := range maps.Values(s.Rejected) {
		n += v
	}
	return n
}

// TotalSkipped sums Skipped.
func (s CounterSnapshot) TotalSkipped() uint64 {
	var n uint64
	for v := range maps.Values(s.Skipped) {
		n += v
	}
	return n
}

func (c *Counters) reject(r Reason) {
	if v, ok := c.rejected[r]; ok {
		v.Add(1)
		return
	}
	c.otherRejected.Add(1)
}

func (c *Counters) skip(r Reason) {
	if v, ok := c.skipped[r]; ok {
		v.Add(1)
	}
}
