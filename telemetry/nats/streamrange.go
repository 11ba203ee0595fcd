package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// ErrEmptyRange is returned by StreamRange.Run when the stream holds nothing in the range.
var ErrEmptyRange = errors.New("telemetry: the stream holds no message in the range")

// StreamRange is a Source that reads a range of a JetStream stream once, in stream order,
// with an ordered consumer: from sequence FromSeq (or the first message stored at or
// after Since, or the start) up to sequence ToSeq (or the last message stored at or
// before Until, or the last message present when Run started). Tabletop replay reads
// what a stream really received with it, and the service catches up on the events
// acknowledged after its last detector checkpoint. Messages that do not decode are
// counted (Counters, rejected) and skipped: the service dead-lettered them when they
// arrived. So are events refused by the door (Admission, against the Reference). Each
// event's Seq is its stream sequence.
type StreamRange struct {
	// Stream is the stream to read.
	Stream jetstream.Stream
	// FromSeq and ToSeq bound the range by stream sequence (0: unbounded). With ToSeq,
	// a stream that ends before it is an error (messages are missing).
	FromSeq, ToSeq uint64
	// Since and Until bound the range by stream time (zero: unbounded).
	Since, Until time.Time
	// NewDecoder makes the decoder; default the native JSON decoder.
	NewDecoder func() telemetry.Decoder
	// BatchSize bounds a handler batch. Default 4096.
	BatchSize int
	// Counters receives the counts; one is created when nil.
	Counters *telemetry.Counters
	// Logger receives what was skipped.
	Logger *zap.Logger
	// Admission is the door every decoded event passes (see telemetry.Admission); a
	// refused event is counted (Counters, rejected) and skipped. nil means
	// telemetry.DefaultAdmission().
	Admission *telemetry.Admission
	// VendorToken says which subject token names the vendor, as
	// JetStreamOptions.VendorToken, the filters being the stream's subjects.
	VendorToken int
	// Reference is what event times are bounded against. Default ReferenceWatermark.
	Reference Reference
}

// Reference says what a StreamRange bounds event times against.
type Reference int

const (
	// ReferenceWatermark bounds event times against the robust watermark of the range
	// (telemetry.Watermark), as a file is in replay: a forged time is refused the same
	// way, whatever the range.
	ReferenceWatermark Reference = iota
	// ReferenceStreamTime bounds each event time against the time the server stored
	// its message, the reference the live source had when it first admitted it: the
	// catch-up after a restart admits what the source admitted.
	ReferenceStreamTime
	// ReferenceNone does not bound event times (the other checks of the Admission
	// still apply): the catch-up of a source that has no door.
	ReferenceNone
)

// Run implements Source. It returns nil once the range is read, and ErrEmptyRange when
// the stream holds nothing in it.
func (s *StreamRange) Run(ctx context.Context, h telemetry.Handler) error {
	if s.BatchSize <= 0 {
		s.BatchSize = 4096
	}
	sourceDefaults(&s.Counters, &s.Logger, &s.NewDecoder, telemetry.DecodeOptions{})
	info, err := s.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("telemetry: stream info: %w", err)
	}
	last := info.State.LastSeq
	if s.ToSeq > 0 {
		if last < s.ToSeq {
			return fmt.Errorf("telemetry: stream ends at %d, before sequence %d", last, s.ToSeq)
		}
		last = s.ToSeq
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case s.FromSeq > 0:
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: s.FromSeq}
	case !s.Since.IsZero():
		since := s.Since
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since}
	}
	if last == 0 || last < s.FromSeq || (!s.Since.IsZero() && info.State.LastTime.Before(s.Since)) {
		return ErrEmptyRange
	}
	cons, err := s.Stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("telemetry: ordered consumer: %w", err)
	}
	dec := s.NewDecoder()
	adm := s.Admission
	if adm == nil {
		adm = telemetry.DefaultAdmission()
	}
	var look *telemetry.Lookahead
	if s.Reference == ReferenceWatermark {
		look = telemetry.NewLookahead(adm)
	}
	sv := newSubjectVendor(s.VendorToken, info.Config.Subjects)
	batch := make([]telemetry.Event, 0, s.BatchSize)
	refuse := func(seq uint64, err error) {
		s.Counters.Reject(telemetry.ReasonOf(err))
		s.Logger.Debug("skipping a refused event", zap.Uint64("seq", seq), zap.Error(err))
	}
	// admit adds an event that decoded to the batch once it passed the door (with the
	// watermark, the event that leaves the lookahead).
	var ev telemetry.Event
	admit := func(subject string, stored time.Time) {
		if err := adm.CheckIdentity(&ev, sv.vendor(subject)); err != nil {
			refuse(ev.Seq, err)
			return
		}
		if look == nil {
			if s.Reference == ReferenceNone {
				batch = append(batch, ev)
				return
			}
			if err := adm.CheckTime(ev.Time, telemetry.At(stored)); err != nil {
				refuse(ev.Seq, err)
				return
			}
			batch = append(batch, ev)
			return
		}
		if out, _, err, ok := look.Push(&ev, 0); ok {
			if err != nil {
				refuse(out.Seq, err)
				return
			}
			batch = append(batch, *out)
		}
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := h.Handle(ctx, batch)
		if err == nil {
			s.Counters.AddDelivered(uint64(len(batch)))
		}
		batch = batch[:0]
		return err
	}
	// end hands on the events the lookahead still holds, then the last batch.
	end := func() error {
		for look != nil {
			out, _, err, ok := look.Flush()
			if !ok {
				break
			}
			if err != nil {
				refuse(out.Seq, err)
				continue
			}
			batch = append(batch, *out)
			if len(batch) == cap(batch) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	}
	for {
		msgs, err := cons.Fetch(s.BatchSize, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("telemetry: fetch: %w", err)
		}
		n := 0
		for m := range msgs.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("telemetry: metadata: %w", err)
			}
			seq := md.Sequence.Stream
			if seq > last || (!s.Until.IsZero() && md.Timestamp.After(s.Until)) {
				return end()
			}
			s.Counters.AddReceived(1)
			if err := dec.Decode(m.Data(), &ev); err != nil {
				if errors.Is(err, telemetry.ErrSkipped) {
					s.Counters.Skip(telemetry.ReasonOf(err))
				} else {
					s.Counters.Reject(telemetry.ReasonOf(err))
				}
				s.Logger.Debug("skipping a message that does not decode", zap.Uint64("seq", seq), zap.Error(err))
			} else {
				ev.Seq = seq
				admit(m.Subject(), md.Timestamp)
			}
			if len(batch) == cap(batch) {
				if err := flush(); err != nil {
					return err
				}
			}
			if seq >= last {
				return end()
			}
		}
		if err := msgs.Error(); err != nil {
			return fmt.Errorf("telemetry: fetch: %w", err)
		}
		if n == 0 {
			if s.ToSeq > 0 {
				return fmt.Errorf("telemetry: the stream ended before sequence %d", s.ToSeq)
			}
			return end() // nothing more arrived within the wait: the end
		}
	}
}
