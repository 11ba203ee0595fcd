package telemetry

import (
	"context"
	"errors"
	"fmt"

	"github.com/killswitch-dev/killswitch"
	"go.uber.org/zap"
)

// Handler receives decoded events from a Source, in batches, in the order the source
// read them.
//
// The ack contract: when Handle returns nil, every event of the batch counts as handed
// on (its detections were durably passed to the next stage) and the source may
// acknowledge the messages that carried them. When it returns an error, none of the
// batch is acknowledged, unless the error is a *PartialError, which says how many
// leading events were handed on; the others are then treated according to its Err.
//
// Errors follow the killswitch error model: retryable unless marked with
// killswitch.Permanent. A retryable error means "later": a JetStream source redelivers
// the events not handed on after a delay.
// A permanent error means "never": wrapped in a *PartialError it condemns only the
// event at index Handled (a poison event, dead-lettered with ReasonHandlerFailed), and
// the events after it are offered to the handler again at once; returned on its own it
// condemns the whole batch. Sources that cannot redeliver say what they do instead:
// a core NATS source drops the events (at most once), Read stops and reports the line.
//
// The batch slice and the Event values in it are reused once Handle returns: copy what
// must be kept. Strings in the events are immutable and may be kept. Handle is never
// called concurrently by one source. It should return promptly when ctx is done.
type Handler interface {
	Handle(ctx context.Context, batch []Event) error
}

// HandlerFunc adapts a function to the Handler interface.
type HandlerFunc func(ctx context.Context, batch []Event) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, batch []Event) error { return f(ctx, batch) }

// PartialError is returned by a Handler that handed on the first Handled events of a
// batch and then failed with Err on the event at index Handled.
type PartialError struct {
	// Handled is how many leading events of the batch were handed on.
	Handled int
	// Err is why the event at index Handled was not; mark it with killswitch.Permanent to make it
	// permanent.
	Err error
}

// Error describes the partial failure.
func (e *PartialError) Error() string {
	return fmt.Sprintf("handled %d events, then: %v", e.Handled, e.Err)
}

// Unwrap returns Err.
func (e *PartialError) Unwrap() error { return e.Err }

// HandledCount returns how many leading events of a batch of n events a Handler handed
// on, according to the error err it returned: all of them for nil, PartialError.Handled
// (bounded by n) for a *PartialError, none for any other error. Sources use it to apply
// the ack contract.
func HandledCount(err error, n int) int {
	if err == nil {
		return n
	}
	var pe *PartialError
	if errors.As(err, &pe) {
		return max(0, min(pe.Handled, n))
	}
	return 0
}

// Source delivers events to a Handler until ctx is done or a fatal error occurs. Run
// returns nil when it stopped because ctx was done.
type Source interface {
	Run(ctx context.Context, h Handler) error
}

// IsPoison reports whether the error err a Handler returned condemns exactly one event
// of the batch, the one at index HandledCount(err, n): it is a *PartialError whose Err is
// permanent. A source then dead-letters (or drops, or reports) that event alone and
// offers the events after it to the handler again.
func IsPoison(err error) bool {
	var pe *PartialError
	return errors.As(err, &pe) && killswitch.IsPermanent(pe.Err)
}

// sourceDefaults fills the options every source shares: fresh counters, a no-op
// logger and the native JSON decoder (with dopts) when none is given.
func sourceDefaults(c **Counters, log **zap.Logger, newDecoder *func() Decoder, dopts DecodeOptions) {
	if *c == nil {
		*c = NewCounters()
	}
	if *log == nil {
		*log = zap.NewNop()
	}
	if *newDecoder == nil {
		*newDecoder = func() Decoder { return NewJSONDecoder(dopts) }
	}
}
