package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// StreamRange replays the telemetry a JetStream stream received between Since and
// Until (stream time, i.e. when it was stored), in stream order: how a team replays
// what really happened. Messages that do not decode are counted and skipped (the
// service dead-lettered them when they arrived).
type StreamRange struct {
	Stream       jetstream.Stream
	Since, Until time.Time
	// NewDecoder makes the decoder; default the native JSON decoder.
	NewDecoder func() telemetry.Decoder
	// BatchSize bounds a handler batch. Default 4096.
	BatchSize int
	Log       *zap.Logger
	// Rejected counts the messages that did not decode.
	Rejected int64
}

// ErrEmptyRange is returned when the stream holds nothing in the range.
var ErrEmptyRange = errors.New("replay: the stream holds no message in the range")

// Run implements Source.
func (s *StreamRange) Run(ctx context.Context, h telemetry.Handler) error {
	if s.BatchSize <= 0 {
		s.BatchSize = 4096
	}
	if s.Log == nil {
		s.Log = zap.NewNop()
	}
	info, err := s.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	last := info.State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if !s.Since.IsZero() {
		since := s.Since
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since}
	}
	if last == 0 || (!s.Since.IsZero() && info.State.LastTime.Before(s.Since)) {
		return ErrEmptyRange
	}
	cons, err := s.Stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	var dec telemetry.Decoder = telemetry.NewJSONDecoder(telemetry.DecodeOptions{})
	if s.NewDecoder != nil {
		dec = s.NewDecoder()
	}
	batch := make([]telemetry.Event, 0, s.BatchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := h.Handle(ctx, batch)
		batch = batch[:0]
		return err
	}
	for {
		msgs, err := cons.Fetch(s.BatchSize, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		n := 0
		for m := range msgs.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("metadata: %w", err)
			}
			if !s.Until.IsZero() && md.Timestamp.After(s.Until) {
				return flush()
			}
			batch = append(batch, telemetry.Event{})
			if err := dec.Decode(m.Data(), &batch[len(batch)-1]); err != nil {
				batch = batch[:len(batch)-1]
				s.Rejected++
				s.Log.Debug("skipping a message that does not decode", zap.Uint64("seq", md.Sequence.Stream), zap.Error(err))
			} else {
				batch[len(batch)-1].Seq = md.Sequence.Stream
			}
			if len(batch) == cap(batch) {
				if err := flush(); err != nil {
					return err
				}
			}
			if md.Sequence.Stream >= last {
				return flush()
			}
		}
		if err := msgs.Error(); err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		if n == 0 {
			return flush() // nothing more arrived within the wait: the end
		}
	}
}
