package nats

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// CoreOptions configures a CoreSource. Zero values mean the documented default.
type CoreOptions struct {
	// Subject is the subscription subject. Default "egress.>".
	Subject string
	// Queue, if set, joins a queue group so that instances share the messages.
	Queue string
	// BatchSize bounds the events passed to one Handle call. Default 1000.
	BatchSize int
	// PendingMsgs bounds messages buffered between the connection and the handler;
	// when the buffer is full the client drops messages (counted in Dropped).
	// Default 65536.
	PendingMsgs int
	// Decode configures the default decoder (the native JSON contract).
	Decode telemetry.DecodeOptions
	// NewDecoder, if set, makes the decoder instead; it is called once per Run.
	NewDecoder func() telemetry.Decoder
	// DeadLetter says where rejected messages go.
	DeadLetter DeadLetterOptions
	// Counters receives the source's counts; one is created when nil.
	Counters *telemetry.Counters
	// Logger logs rejected messages and handler failures; nil logs nothing.
	Logger *zap.Logger
	// Admission is the door every decoded event passes (names, declared sensors, event
	// time against Clock); a refused event is dead-lettered with its reason. nil admits
	// every event that decodes.
	Admission *telemetry.Admission
	// VendorToken says which subject token names the vendor, as JetStreamOptions.VendorToken.
	VendorToken int
	// Clock is the reference of the Admission's event-time bounds. Default clock.Real.
	Clock clock.Clock
}

// CoreSource reads telemetry from a core NATS subscription. Core NATS delivers at most
// once: there is no acknowledgement, so a message is lost if the process dies before
// the handler hands it on, if the handler fails (the events are counted as Dropped), or
// if the subscriber falls behind (the client drops messages, also counted). Use a
// JetStreamSource wherever telemetry must not be lost. Rejected messages are
// dead-lettered as by the JetStream source.
type CoreSource struct {
	opts     CoreOptions
	nc       *nats.Conn
	dlq      *deadLetterer
	door     door
	counters *telemetry.Counters
	log      *zap.Logger
}

var _ telemetry.Source = (*CoreSource)(nil)

// NewCoreSource prepares a core NATS source on nc (and the dead-letter stream, unless
// DeadLetter.CoreOnly is set).
func NewCoreSource(ctx context.Context, nc *nats.Conn, o CoreOptions) (*CoreSource, error) {
	if o.Subject == "" {
		o.Subject = DefaultSubject
	}
	if !validSubject(o.Subject, true) {
		return nil, fmt.Errorf("telemetry: invalid subject %q", o.Subject)
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.PendingMsgs <= 0 {
		o.PendingMsgs = 65536
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	sourceDefaults(&o.Counters, &o.Logger, &o.NewDecoder, o.Decode)
	dlq, err := newDeadLetterer(ctx, nc, nil, o.DeadLetter, []string{o.Subject})
	if err != nil {
		return nil, err
	}
	return &CoreSource{opts: o, nc: nc, dlq: dlq, door: newDoor(o.Admission, o.VendorToken, []string{o.Subject}),
		counters: o.Counters, log: o.Logger}, nil
}

// Counters returns the source's counters.
func (s *CoreSource) Counters() *telemetry.Counters { return s.counters }

// Run subscribes and delivers batches to h until ctx is done (then it returns nil) or
// the connection is closed.
func (s *CoreSource) Run(ctx context.Context, h telemetry.Handler) error {
	o := s.opts
	ch := make(chan *nats.Msg, o.PendingMsgs)
	var (
		sub *nats.Subscription
		err error
	)
	if o.Queue != "" {
		sub, err = s.nc.ChanQueueSubscribe(o.Subject, o.Queue, ch)
	} else {
		sub, err = s.nc.ChanSubscribe(o.Subject, ch)
	}
	if err != nil {
		return fmt.Errorf("telemetry: subscribe %s: %w", o.Subject, err)
	}
	var lastDropped int
	defer func() {
		s.noteDropped(sub, &lastDropped)
		_ = sub.Unsubscribe()
	}()
	dec := o.NewDecoder()
	c := s.counters
	batch := make([]*nats.Msg, 0, o.BatchSize)
	events := make([]telemetry.Event, 0, o.BatchSize)
	var letters []deadLetter
	closed := s.nc.StatusChanged(nats.CLOSED)
	defer s.nc.RemoveStatusListener(closed)
	if s.nc.IsClosed() {
		return ErrSourceClosed
	}
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case <-closed:
			return ErrSourceClosed
		case m := <-ch:
			batch = append(batch, m)
		}
	fill:
		for len(batch) < o.BatchSize {
			select {
			case m := <-ch:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		c.AddReceived(uint64(len(batch)))
		events, letters = events[:0], letters[:0]
		var now time.Time
		if s.door.adm != nil {
			now = o.Clock.Now()
		}
		for _, m := range batch {
			events = append(events, telemetry.Event{})
			err := dec.Decode(m.Data, &events[len(events)-1])
			if err == nil {
				err = s.door.check(&events[len(events)-1], m.Subject, now)
			}
			if err == nil {
				continue
			}
			events = events[:len(events)-1]
			r := telemetry.ReasonOf(err)
			if r.IsSkip() {
				c.Skip(r)
				continue
			}
			if r == "" {
				r = telemetry.ReasonInvalidJSON
			}
			c.Reject(r)
			letters = append(letters, deadLetter{data: m.Data, header: m.Header, subject: m.Subject, reason: r, detail: telemetry.DetailOf(err)})
		}
		if len(letters) > 0 {
			for i, err := range s.dlq.send(ctx, letters) {
				if err != nil {
					c.AddDeadLetterFailures(1)
					s.log.Error("telemetry: dead letter lost (core NATS is at most once)", zap.String("reason", string(letters[i].reason)), zap.Error(err))
					continue
				}
				c.AddDeadLettered(1)
				s.log.Debug("telemetry: message dead-lettered", zap.String("reason", string(letters[i].reason)),
					zap.String("detail", letters[i].detail), zap.String("subject", letters[i].subject))
			}
		}
		for start := 0; start < len(events); {
			err := h.Handle(ctx, events[start:])
			n := telemetry.HandledCount(err, len(events)-start)
			c.AddDelivered(uint64(n))
			if err == nil {
				break
			}
			c.AddHandlerErrors(1)
			lost := len(events) - start - n
			if telemetry.IsPoison(err) && ctx.Err() == nil {
				lost = 1 // only the poison event; go on with the rest
			}
			c.AddDropped(uint64(lost))
			s.log.Error("telemetry: handler failed; core NATS cannot redeliver, events dropped",
				zap.Int("dropped", lost), zap.Error(err))
			start += n + lost
		}
		s.noteDropped(sub, &lastDropped)
	}
}

// noteDropped adds messages the client dropped for this subscription to the counters.
func (s *CoreSource) noteDropped(sub *nats.Subscription, last *int) {
	if n, err := sub.Dropped(); err == nil && n > *last {
		s.counters.AddDropped(uint64(n - *last))
		s.log.Warn("telemetry: core NATS subscription fell behind; messages dropped", zap.Int("dropped", n-*last))
		*last = n
	}
}
