package telemetry

import (
	"maps"
	"sync/atomic"
)

// Counters count what sources did. They are safe for concurrent use and may be shared
// by several sources; the metrics layer reads them with Snapshot. Sources, in this
// package and elsewhere (the NATS sources of telemetry/nats), count with the Add
// methods, each feeding the CounterSnapshot field of the same name, and with Reject and
// Skip; each is one atomic addition and never allocates.
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
	// redelivered (in the JetStream source's AckBatch mode, covered by the batch
	// acknowledgement).
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

// AddReceived counts n messages (or file lines) read, whatever becomes of them.
func (c *Counters) AddReceived(n uint64) { c.received.Add(n) }

// AddDelivered counts n events the handler accepted.
func (c *Counters) AddDelivered(n uint64) { c.delivered.Add(n) }

// AddAcked counts n JetStream messages acknowledged.
func (c *Counters) AddAcked(n uint64) { c.acked.Add(n) }

// AddNaked counts n JetStream messages negatively acknowledged for redelivery.
func (c *Counters) AddNaked(n uint64) { c.naked.Add(n) }

// AddTerminated counts n JetStream messages terminated (dead-lettered, never
// redelivered).
func (c *Counters) AddTerminated(n uint64) { c.terminated.Add(n) }

// AddDuplicates counts n redeliveries of messages already done, not handed on again.
func (c *Counters) AddDuplicates(n uint64) { c.duplicates.Add(n) }

// AddFetched counts n messages a source fetched from the stream itself.
func (c *Counters) AddFetched(n uint64) { c.fetched.Add(n) }

// AddHandlerErrors counts n handler calls that returned an error.
func (c *Counters) AddHandlerErrors(n uint64) { c.handlerErrors.Add(n) }

// AddDeadLettered counts n messages published to the dead-letter subject.
func (c *Counters) AddDeadLettered(n uint64) { c.deadLettered.Add(n) }

// AddDeadLetterFailures counts n dead-letter publications that failed.
func (c *Counters) AddDeadLetterFailures(n uint64) { c.deadLetterFailures.Add(n) }

// AddDropped counts n events lost (at most once delivery).
func (c *Counters) AddDropped(n uint64) { c.dropped.Add(n) }

// Reject counts one message that did not decode or validate, under its reason; reasons
// that are not among InvalidReasons are counted together as "other".
func (c *Counters) Reject(r Reason) {
	if v, ok := c.rejected[r]; ok {
		v.Add(1)
		return
	}
	c.otherRejected.Add(1)
}

// Skip counts one record that carried no event, under its reason; reasons that are not
// among SkipReasons are not counted.
func (c *Counters) Skip(r Reason) {
	if v, ok := c.skipped[r]; ok {
		v.Add(1)
	}
}
