package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// Defaults of JetStreamOptions.
const (
	// DefaultStream is the stream that holds telemetry.
	DefaultStream = "EGRESS"
	// DefaultSubject is the telemetry subject filter.
	DefaultSubject = "egress.>"
	// DefaultDurable names the durable consumer.
	DefaultDurable = "killswitch-telemetry"
	// DefaultStreamMaxAge is how long the stream keeps telemetry.
	DefaultStreamMaxAge = 7 * 24 * time.Hour
	// DefaultAckWait is the consumer's acknowledgement deadline.
	DefaultAckWait = 30 * time.Second
	// DefaultMaxDeliver bounds deliveries of one message.
	DefaultMaxDeliver = 8
	// DefaultMaxAckPending bounds unacknowledged deliveries.
	DefaultMaxAckPending = 20000
	// DefaultBatchSize bounds the events of one Handle call.
	DefaultBatchSize = 1000
	// DefaultNakDelay is the first redelivery delay after a retryable handler error.
	DefaultNakDelay = time.Second
	// DefaultMaxNakDelay caps the redelivery delay.
	DefaultMaxNakDelay = time.Minute
)

// AckMode says how a JetStreamSource acknowledges messages. It is part of the durable
// consumer's configuration: changing it for an existing consumer is refused by the
// server (delete the consumer first).
type AckMode int

const (
	// AckBatch (the default) uses the AckAll policy and acknowledges each batch with a
	// single message: the acknowledgement of stream sequence X covers everything at or
	// below X, and X is only ever acknowledged once every message at or below it was
	// handed on, dead-lettered, skipped, or is known not to exist (see ackFloor). A
	// message lost in transit, or waiting for redelivery after a handler error, holds
	// the acknowledgement back until it is done; if it stays missing for GapTimeout the
	// source fetches it from the stream itself. Redeliveries of messages already done
	// are recognized and not handed on again. This is what reaches the throughput
	// target: on the reference 2-core machine the server handles about 185k individual
	// acknowledgements per second, against more than 300k messages per second
	// acknowledged in batches.
	//
	// Batch acknowledgement suits one reader per consumer (several are safe, but each
	// then fetches the messages the others hold) and a filter that covers the whole
	// stream (checked when the stream is bound with BindOnly).
	AckBatch AckMode = iota
	// AckEachMessage uses the AckExplicit policy: every message is acknowledged,
	// negatively acknowledged or terminated on its own. Simpler, and slower.
	AckEachMessage
)

// JetStreamOptions configures a JetStreamSource. Zero values mean the documented
// default; every consumer setting is sent to the server explicitly (reliability M3).
type JetStreamOptions struct {
	// Stream is the stream holding telemetry. Default "EGRESS".
	Stream string
	// Subjects are the stream's subjects and the consumer's filter. Default ["egress.>"].
	Subjects []string
	// BindOnly uses an existing stream as it is. By default the stream is created, or
	// updated, with Subjects, file storage, limits retention, StreamMaxAge,
	// StreamMaxBytes and Replicas.
	BindOnly bool
	// StreamMaxAge bounds how long telemetry is kept. Default 7 days.
	StreamMaxAge time.Duration
	// StreamMaxBytes bounds the stream's size; 0 leaves it to the server's limits.
	StreamMaxBytes int64
	// Replicas is the stream's replica count. Default 1 (three across failure domains
	// is recommended in production).
	Replicas int
	// Durable names the durable pull consumer. Default "killswitch-telemetry".
	Durable string
	// AckMode chooses batch (AckAll) or per-message (AckExplicit) acknowledgement.
	// Default AckBatch.
	AckMode AckMode
	// AckWait is how long the server waits for an acknowledgement before redelivering.
	// Default 30s.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one message. A message that still fails on its
	// last delivery is dead-lettered (ReasonHandlerFailed), never retried forever.
	// Default 8.
	MaxDeliver int
	// BackOff are the redelivery delays after an ack timeout (the server uses BackOff[0]
	// as AckWait). nil means AckWait, 2×, 4×, 8× AckWait (at most MaxDeliver entries);
	// an empty non-nil slice means none (AckWait every time).
	BackOff []time.Duration
	// MaxAckPending bounds messages delivered and not yet acknowledged. Default 20000.
	MaxAckPending int
	// BatchSize bounds the events passed to one Handle call; the client buffers up to
	// 4 × BatchSize messages. Default 1000.
	BatchSize int
	// NakDelay is the redelivery delay after a retryable handler error on the first
	// delivery; it doubles with each delivery up to MaxNakDelay. Default 1s.
	NakDelay time.Duration
	// MaxNakDelay caps the redelivery delay after a retryable handler error. Default 1m.
	MaxNakDelay time.Duration
	// GapTimeout (AckBatch only) is how long a missing message may hold the
	// acknowledgement back before the source looks for it in the stream itself.
	// Default 2 × AckWait + MaxNakDelay.
	GapTimeout time.Duration
	// Decode configures the default decoder (the native JSON contract).
	Decode telemetry.DecodeOptions
	// NewDecoder, if set, makes the decoder instead (e.g. an OCSF decoder); it is
	// called once per Run.
	NewDecoder func() telemetry.Decoder
	// DeadLetter says where rejected messages go.
	DeadLetter DeadLetterOptions
	// Counters receives the source's counts; one is created when nil.
	Counters *telemetry.Counters
	// Logger logs transport problems and rejected messages; nil logs nothing.
	Logger *zap.Logger
	// Clock tells the time for GapTimeout, and is the reference of the Admission's
	// event-time bounds. Default clock.Real.
	Clock clock.Clock
	// Admission is the door every decoded event passes (names, declared sensors, event
	// time against Clock: at most MaxFutureSkew ahead of now, and at most MaxAge behind
	// now or, if earlier, the time the stream stored the message, so a backlog read
	// after an outage of Killswitch is not refused for its wait); a refused event is
	// dead-lettered with its reason. nil admits every event that decodes: the service
	// always sets one.
	Admission *telemetry.Admission
	// VendorToken says which token of a message's subject names the vendor its body must
	// carry (ReasonVendorMismatch), when Admission is set: 0 derives it from Subjects
	// (the first wildcard: egress.> → the second token), n > 0 is token n (1-based),
	// negative turns the check off (vendors attributed by address, e.g. VPC flow logs).
	VendorToken int
	// Group, if set, makes the source one member of a partitioned consumer group
	// shared by several instances instead of reading the durable consumer (see Group).
	Group *Group
}

func (o JetStreamOptions) withDefaults() JetStreamOptions {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if len(o.Subjects) == 0 {
		o.Subjects = []string{DefaultSubject}
	}
	if o.StreamMaxAge <= 0 {
		o.StreamMaxAge = DefaultStreamMaxAge
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Durable == "" {
		o.Durable = DefaultDurable
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = DefaultMaxDeliver
	}
	if o.BackOff == nil {
		for i, d := 0, o.AckWait; i < 4 && i < o.MaxDeliver; i, d = i+1, 2*d {
			o.BackOff = append(o.BackOff, d)
		}
	}
	if o.MaxAckPending <= 0 {
		o.MaxAckPending = DefaultMaxAckPending
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.NakDelay <= 0 {
		o.NakDelay = DefaultNakDelay
	}
	if o.MaxNakDelay <= 0 {
		o.MaxNakDelay = DefaultMaxNakDelay
	}
	if o.GapTimeout <= 0 {
		o.GapTimeout = 2*o.AckWait + o.MaxNakDelay
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	sourceDefaults(&o.Counters, &o.Logger, &o.NewDecoder, o.Decode)
	return o
}

// sourceDefaults fills the options every source shares, as the file source of package
// telemetry does: fresh counters, a no-op logger and the native JSON decoder (with
// dopts) when none is given.
func sourceDefaults(c **telemetry.Counters, log **zap.Logger, newDecoder *func() telemetry.Decoder, dopts telemetry.DecodeOptions) {
	if *c == nil {
		*c = telemetry.NewCounters()
	}
	if *log == nil {
		*log = zap.NewNop()
	}
	if *newDecoder == nil {
		*newDecoder = func() telemetry.Decoder { return telemetry.NewJSONDecoder(dopts) }
	}
}

// JetStreamSource reads telemetry from a JetStream durable pull consumer, at least
// once: a message is acknowledged only after the Handler handed its event on (or it was
// skipped, or dead-lettered). A retryable handler error negatively acknowledges the
// events not handed on, with a delay that grows with each delivery; a permanent one
// (see Handler), or a failure on the last delivery MaxDeliver allows, dead-letters them
// with ReasonHandlerFailed. Messages that do not decode or validate are dead-lettered
// with their reason and never redelivered (terminated, or covered by the batch
// acknowledgement); if the dead letter cannot be stored, the message is negatively
// acknowledged instead, so nothing is lost. A crash before the acknowledgement means
// redelivery, not loss. See AckMode for how acknowledgements are sent.
//
// The source survives NATS restarts: the connection reconnects (configure it to
// reconnect forever) and the durable consumer resumes where its acknowledgements left
// off.
type JetStreamSource struct {
	opts     JetStreamOptions
	nc       *nats.Conn
	js       jetstream.JetStream
	consumer jetstream.Consumer
	dlq      *deadLetterer
	door     door
	counters *telemetry.Counters
	log      *zap.Logger
}

var _ telemetry.Source = (*JetStreamSource)(nil)

// NewJetStreamSource creates (or updates) the stream, unless BindOnly, the durable
// consumer and the dead-letter stream, explicitly configured from o.
func NewJetStreamSource(ctx context.Context, nc *nats.Conn, o JetStreamOptions) (*JetStreamSource, error) {
	o = o.withDefaults()
	for _, s := range o.Subjects {
		if !validSubject(s, true) {
			return nil, fmt.Errorf("telemetry: invalid subject %q", s)
		}
	}
	if len(o.BackOff) > o.MaxDeliver {
		return nil, fmt.Errorf("telemetry: %d BackOff delays for MaxDeliver %d: at most one per delivery", len(o.BackOff), o.MaxDeliver)
	}
	if o.AckMode != AckBatch && o.AckMode != AckEachMessage {
		return nil, fmt.Errorf("telemetry: unknown AckMode %d", o.AckMode)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("telemetry: jetstream: %w", err)
	}
	if o.BindOnly {
		st, err := js.Stream(ctx, o.Stream)
		if err != nil {
			return nil, fmt.Errorf("telemetry: stream %s: %w", o.Stream, err)
		}
		if o.AckMode == AckBatch {
			// Batch acknowledgement accounts for every stream sequence; messages outside
			// the filter would each have to be looked up. Refuse rather than crawl.
			for _, ss := range st.CachedInfo().Config.Subjects {
				covered := false
				for _, f := range o.Subjects {
					covered = covered || patternCovers(f, ss)
				}
				if !covered {
					return nil, fmt.Errorf("telemetry: stream %s subject %q is outside the filter %v: AckBatch needs the filter to cover the stream; use AckEachMessage", o.Stream, ss, o.Subjects)
				}
			}
		}
	} else {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        o.Stream,
			Description: "Killswitch egress telemetry.",
			Subjects:    o.Subjects,
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      o.StreamMaxAge,
			MaxBytes:    max(o.StreamMaxBytes, 0),
			Replicas:    o.Replicas,
			Duplicates:  2 * time.Minute,
		})
		if err != nil {
			return nil, fmt.Errorf("telemetry: create or update stream %s: %w", o.Stream, err)
		}
	}
	if o.Group != nil {
		o.AckMode = AckEachMessage // several readers: no acknowledgement floor to share
		src := &JetStreamSource{opts: o, nc: nc, js: js, door: newDoor(o.Admission, o.VendorToken, o.Subjects), counters: o.Counters, log: o.Logger}
		if err := src.createGroup(ctx); err != nil {
			return nil, err
		}
		if src.dlq, err = newDeadLetterer(ctx, nc, js, o.DeadLetter, o.Subjects); err != nil {
			return nil, err
		}
		return src, nil
	}
	policy := jetstream.AckAllPolicy
	if o.AckMode == AckEachMessage {
		policy = jetstream.AckExplicitPolicy
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       o.Durable,
		Description:   "Killswitch telemetry decoder and detectors.",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     policy,
		AckWait:       o.AckWait,
		MaxDeliver:    o.MaxDeliver,
		BackOff:       o.BackOff,
		MaxAckPending: o.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	if len(o.BackOff) > 0 {
		cfg.AckWait = o.BackOff[0]
	}
	if len(o.Subjects) == 1 {
		cfg.FilterSubject = o.Subjects[0]
	} else {
		cfg.FilterSubjects = o.Subjects
	}
	consumer, err := js.CreateOrUpdateConsumer(ctx, o.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("telemetry: create or update consumer %s on %s (an existing consumer keeps its ack policy): %w", o.Durable, o.Stream, err)
	}
	dlq, err := newDeadLetterer(ctx, nc, js, o.DeadLetter, o.Subjects)
	if err != nil {
		return nil, err
	}
	return &JetStreamSource{opts: o, nc: nc, js: js, consumer: consumer, dlq: dlq, door: newDoor(o.Admission, o.VendorToken, o.Subjects),
		counters: o.Counters, log: o.Logger}, nil
}

// Counters returns the source's counters.
func (s *JetStreamSource) Counters() *telemetry.Counters { return s.counters }

// ErrSourceClosed is returned by Run when the NATS connection was closed under it.
var ErrSourceClosed = errors.New("telemetry: source connection closed")

// Run consumes until ctx is done (then it returns nil) or the connection is closed.
// Batches go to h one at a time. On return, what is done is acknowledged and messages
// received but not handed on are negatively acknowledged so they are redelivered
// promptly; none of them is acknowledged.
func (s *JetStreamSource) Run(ctx context.Context, h telemetry.Handler) error {
	o := s.opts
	p, err := s.newProcessor(ctx, h)
	if err != nil {
		return err
	}
	msgs := make(chan jetstream.Msg, o.BatchSize)
	done := make(chan struct{})
	push := func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-done:
		}
	}
	var stop func()
	var closed <-chan error
	if o.Group != nil {
		stop, closed, err = s.consumeGroup(ctx, push)
	} else {
		stop, closed, err = s.consumeDurable(push)
	}
	if err != nil {
		return err
	}
	defer func() {
		close(done) // release a callback blocked on a full channel before stopping
		stop()
		p.flushAck()
		// Hand back what was received and not processed (a negative acknowledgement
		// concerns one message, also under AckAll).
		for {
			select {
			case m := <-msgs:
				if m.Nak() == nil {
					s.counters.AddNaked(1)
				}
			default:
				return
			}
		}
	}()
	var tick <-chan time.Time
	if p.floor != nil {
		t := time.NewTicker(max(o.GapTimeout/4, 10*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	batch := make([]jetstream.Msg, 0, o.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case err := <-closed:
			return err
		case <-tick:
			p.maybeResolve(ctx)
			continue
		case m := <-msgs:
			batch = append(batch, m)
		}
	fill:
		for len(batch) < o.BatchSize {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		p.process(ctx, batch)
	}
}

// consumeDurable starts pulling from the durable consumer into push. closed reports
// why consumption ended for good: the consumer was deleted, or the connection closed.
func (s *JetStreamSource) consumeDurable(push func(jetstream.Msg)) (stop func(), closed <-chan error, err error) {
	o := s.opts
	fatal := make(chan error, 2)
	cc, err := s.consumer.Consume(push,
		jetstream.PullMaxMessages(4*o.BatchSize),
		// A pull request lost in a cluster failover (the consumer's leader moving, or
		// the node the client was on going away) is noticed by missing heartbeats and
		// sent again: 2×heartbeat, 1s here (the default, half of a 30s expiry, made a
		// NATS node failure stop consumption for 30s).
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(500*time.Millisecond),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
				select {
				case fatal <- fmt.Errorf("telemetry: consumer %s: %w", o.Durable, err):
				default:
				}
			default:
				s.log.Warn("telemetry: jetstream consume", zap.String("consumer", o.Durable), zap.Error(err))
			}
		}))
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: consume %s: %w", o.Durable, err)
	}
	go func() {
		<-cc.Closed()
		select {
		case fatal <- ErrSourceClosed:
		default:
		}
	}()
	return cc.Stop, fatal, nil
}

// item is one message of a batch and what its reply subject says.
type item struct {
	m    jetstream.Msg
	meta ackMeta
}

// jsProcessor decodes, dead-letters, hands on and acknowledges batches of messages.
// It is owned by one Run.
type jsProcessor struct {
	s       *JetStreamSource
	o       *JetStreamOptions
	h       telemetry.Handler
	dec     telemetry.Decoder
	floor   *ackFloor // nil in AckEachMessage mode
	stream  jetstream.Stream
	moved   time.Time // when the floor last moved
	events  []telemetry.Event
	evItems []item
	skipped []item
	bad     []item
	letters []deadLetter
}

func (s *JetStreamSource) newProcessor(ctx context.Context, h telemetry.Handler) (*jsProcessor, error) {
	n := s.opts.BatchSize
	p := &jsProcessor{s: s, o: &s.opts, h: h, dec: s.opts.NewDecoder(), events: make([]telemetry.Event, 0, n), evItems: make([]item, 0, n)}
	if s.opts.AckMode == AckBatch {
		// Start from the server's acknowledgement floor: everything at or below it is done.
		info, err := s.consumer.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: consumer %s: %w", s.opts.Durable, err)
		}
		if info.Config.AckPolicy != jetstream.AckAllPolicy {
			return nil, fmt.Errorf("telemetry: consumer %s has ack policy %s, batch acknowledgement needs %s", s.opts.Durable, info.Config.AckPolicy, jetstream.AckAllPolicy)
		}
		if p.stream, err = s.js.Stream(ctx, s.opts.Stream); err != nil {
			return nil, fmt.Errorf("telemetry: stream %s: %w", s.opts.Stream, err)
		}
		p.floor = newAckFloor(info.AckFloor.Stream)
		p.moved = s.opts.Clock.Now()
	}
	return p, nil
}

func (p *jsProcessor) process(ctx context.Context, batch []jetstream.Msg) {
	c := p.s.counters
	p.events, p.evItems, p.skipped, p.bad, p.letters = p.events[:0], p.evItems[:0], p.skipped[:0], p.bad[:0], p.letters[:0]
	c.AddReceived(uint64(len(batch)))
	var now time.Time
	if p.s.door.adm != nil {
		now = p.o.Clock.Now()
	}
	for _, m := range batch {
		it := item{m: m}
		it.meta, _ = parseAckReply(m.Reply())
		if p.o.Group != nil {
			// The group's work queue holds copies: the telemetry stream's own sequence
			// is what checkpoints and catch-ups count in.
			it.meta.streamSeq = sourceSeq(m.Headers())
		}
		if p.floor != nil {
			if seq := it.meta.streamSeq; seq > 0 && p.floor.isDone(seq) {
				// A redelivery of a message already done (its acknowledgement was lost or
				// is pending): not handed on again; acknowledging it again is safe when
				// everything at or below it is done.
				c.AddDuplicates(1)
				if seq <= p.floor.floor {
					p.ackAll(m.Reply(), 0)
				}
				continue
			}
		}
		p.events = append(p.events, telemetry.Event{})
		err := p.dec.Decode(m.Data(), &p.events[len(p.events)-1])
		if err == nil {
			err = p.s.door.checkStored(&p.events[len(p.events)-1], m.Subject(), now, stampTime(it.meta.stamp))
		}
		if err == nil {
			p.events[len(p.events)-1].Seq = it.meta.streamSeq
			p.evItems = append(p.evItems, it)
			continue
		}
		p.events = p.events[:len(p.events)-1]
		r := telemetry.ReasonOf(err)
		if r.IsSkip() {
			c.Skip(r)
			p.skipped = append(p.skipped, it)
			continue
		}
		if r == "" {
			r = telemetry.ReasonInvalidJSON
		}
		c.Reject(r)
		p.bad = append(p.bad, it)
		p.letters = append(p.letters, p.letter(it, r, telemetry.DetailOf(err)))
	}
	if len(p.letters) > 0 {
		p.deadLetter(ctx, p.bad, p.letters)
	}
	for start := 0; start < len(p.events); {
		err := p.h.Handle(ctx, p.events[start:])
		n := telemetry.HandledCount(err, len(p.events)-start)
		c.AddDelivered(uint64(n))
		for _, it := range p.evItems[start : start+n] {
			p.done(it)
		}
		if err == nil {
			break
		}
		c.AddHandlerErrors(1)
		rest := p.evItems[start+n:]
		if telemetry.IsPoison(err) && ctx.Err() == nil && len(rest) > 0 {
			p.failed(ctx, rest[:1], err) // dead-letter the poison event, go on with the rest
			start += n + 1
			continue
		}
		p.failed(ctx, rest, err)
		break
	}
	for _, it := range p.skipped {
		p.done(it)
	}
	p.flushAck()
}

// done records that it needs no more work: acknowledged now (AckEachMessage) or covered
// by the next batch acknowledgement.
func (p *jsProcessor) done(it item) {
	if p.floor == nil {
		if err := it.m.Ack(); err != nil {
			p.s.log.Warn("telemetry: ack", zap.Error(err))
			return
		}
		p.s.counters.AddAcked(1)
		return
	}
	if it.meta.streamSeq == 0 {
		p.s.log.Warn("telemetry: message without JetStream metadata; it will be redelivered", zap.String("reply", it.m.Reply()))
		return
	}
	p.floor.markDone(it.meta.streamSeq, it.m.Reply())
}

// terminated records that it was dead-lettered and must never be redelivered.
func (p *jsProcessor) terminated(it item, reason telemetry.Reason) {
	if p.floor == nil {
		if err := it.m.TermWithReason(string(reason)); err != nil {
			p.s.log.Warn("telemetry: terminate", zap.Error(err))
			return
		}
		p.s.counters.AddTerminated(1)
		return
	}
	p.s.counters.AddTerminated(1)
	p.floor.markDone(it.meta.streamSeq, it.m.Reply())
}

// retry negatively acknowledges it for redelivery after delay.
func (p *jsProcessor) retry(it item) {
	if p.floor != nil && it.meta.streamSeq > 0 {
		p.floor.markFailed(it.meta.streamSeq, max(it.meta.delivered, 1), p.o.Clock.Now())
	}
	if it.m.NakWithDelay(p.nakDelay(it.meta.delivered)) == nil {
		p.s.counters.AddNaked(1)
	}
}

// flushAck sends the batch acknowledgement if the floor moved.
func (p *jsProcessor) flushAck() {
	if p.floor == nil {
		return
	}
	if reply, n := p.floor.take(); reply != "" {
		p.ackAll(reply, n)
		p.moved = p.o.Clock.Now()
	}
}

// ackAll acknowledges everything up to the message whose reply subject is reply.
func (p *jsProcessor) ackAll(reply string, n int) {
	if err := p.s.nc.Publish(reply, ackPayload); err != nil {
		p.s.log.Warn("telemetry: ack", zap.Error(err))
		return
	}
	p.s.counters.AddAcked(uint64(n))
}

var ackPayload = []byte("+ACK")

// letter describes it as a dead letter.
func (p *jsProcessor) letter(it item, r telemetry.Reason, detail string) deadLetter {
	return deadLetter{data: it.m.Data(), header: it.m.Headers(), subject: it.m.Subject(), reason: r, detail: detail,
		stream: p.o.Stream, seq: it.meta.streamSeq, delivered: it.meta.delivered}
}

// deadLetter stores the letters and terminates their originals; an original whose
// letter could not be stored is negatively acknowledged, to be tried again.
func (p *jsProcessor) deadLetter(ctx context.Context, items []item, letters []deadLetter) {
	c := p.s.counters
	errs := p.s.dlq.send(ctx, letters)
	for i, it := range items {
		l := &letters[i]
		if errs[i] != nil {
			c.AddDeadLetterFailures(1)
			p.s.log.Error("telemetry: dead letter not stored; message will be redelivered",
				zap.String("reason", string(l.reason)), zap.Uint64("stream_seq", l.seq), zap.Error(errs[i]))
			p.retry(it)
			continue
		}
		c.AddDeadLettered(1)
		p.s.log.Debug("telemetry: message dead-lettered", zap.String("reason", string(l.reason)),
			zap.String("detail", l.detail), zap.String("subject", l.subject), zap.Uint64("stream_seq", l.seq))
		p.terminated(it, l.reason)
	}
}

// failed handles messages whose events the handler did not hand on.
func (p *jsProcessor) failed(ctx context.Context, items []item, err error) {
	c := p.s.counters
	if len(items) == 0 {
		return
	}
	if ctx.Err() != nil {
		// Shutting down: give them back at once, another consumer may take them.
		for _, it := range items {
			if p.floor != nil && it.meta.streamSeq > 0 {
				p.floor.markFailed(it.meta.streamSeq, max(it.meta.delivered, 1), p.o.Clock.Now())
			}
			if it.m.Nak() == nil {
				c.AddNaked(1)
			}
		}
		return
	}
	permanent := killswitch.IsPermanent(err)
	var final []item
	var letters []deadLetter
	for _, it := range items {
		if permanent || it.meta.delivered >= uint64(p.o.MaxDeliver) {
			final = append(final, it)
			letters = append(letters, p.letter(it, telemetry.ReasonHandlerFailed, err.Error()))
			continue
		}
		p.retry(it)
	}
	p.s.log.Warn("telemetry: handler failed", zap.Int("messages", len(items)), zap.Bool("permanent", permanent),
		zap.Int("dead_lettered", len(final)), zap.Error(err))
	if len(final) > 0 {
		for range final {
			c.Reject(telemetry.ReasonHandlerFailed)
		}
		p.deadLetter(ctx, final, letters)
	}
}

// nakDelay is the redelivery delay after the delivered-th delivery failed.
func (p *jsProcessor) nakDelay(delivered uint64) time.Duration {
	d := p.o.NakDelay
	for i := uint64(1); i < delivered && d < p.o.MaxNakDelay; i++ {
		d *= 2
	}
	return min(d, p.o.MaxNakDelay)
}

// maybeResolve looks for the messages holding the batch acknowledgement back once the
// floor has not moved for GapTimeout.
func (p *jsProcessor) maybeResolve(ctx context.Context) {
	if p.floor == nil || !p.floor.blocked() {
		p.moved = p.o.Clock.Now()
		return
	}
	now := p.o.Clock.Now()
	if now.Sub(p.moved) < p.o.GapTimeout {
		return
	}
	p.resolve(ctx, now)
	p.moved = now
}

// maxGapsPerRound bounds the messages fetched from the stream per resolution round.
const maxGapsPerRound = 256

// resolve accounts for missing sequences: the server's floor and the stream's first
// sequence may have moved past them; a sequence that no longer exists, or is on a
// subject outside the filter, is done; one that exists is fetched from the stream and
// processed here, its attempts counted against MaxDeliver.
func (p *jsProcessor) resolve(ctx context.Context, now time.Time) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	before := p.floor.floor
	if info, err := p.s.consumer.Info(rctx); err == nil {
		p.floor.raise(info.AckFloor.Stream)
	}
	if info, err := p.stream.Info(rctx); err == nil && info.State.FirstSeq > 0 {
		p.floor.raise(info.State.FirstSeq - 1)
	}
	gaps := p.floor.gaps(maxGapsPerRound, now.Add(-p.o.GapTimeout))
	fetched := 0
	for _, seq := range gaps {
		m, err := p.stream.GetMsg(rctx, seq)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			p.floor.markDone(seq, "")
			continue
		case err != nil:
			p.s.log.Warn("telemetry: fetch missing message", zap.Uint64("stream_seq", seq), zap.Error(err))
			continue
		case !p.matchesFilter(m.Subject):
			p.floor.markDone(seq, "")
			continue
		}
		fetched++
		p.processFetched(ctx, m, seq)
	}
	p.s.counters.AddFetched(uint64(fetched))
	p.s.log.Info("telemetry: batch acknowledgement was held back; resolved missing messages",
		zap.Uint64("floor_before", before), zap.Uint64("floor_after", p.floor.floor),
		zap.Int("gaps", len(gaps)), zap.Int("fetched", fetched))
	p.flushAck()
}

func (p *jsProcessor) matchesFilter(subject string) bool {
	for _, f := range p.o.Subjects {
		if subjectMatches(f, subject) {
			return true
		}
	}
	return false
}

// processFetched processes one message fetched from the stream by the resolver.
func (p *jsProcessor) processFetched(ctx context.Context, m *jetstream.RawStreamMsg, seq uint64) {
	c := p.s.counters
	c.AddReceived(1)
	attempt := p.floor.attempts(seq) + 1
	l := deadLetter{data: m.Data, header: m.Header, subject: m.Subject, stream: p.o.Stream, seq: seq, delivered: attempt}
	var e telemetry.Event
	err := p.dec.Decode(m.Data, &e)
	if err == nil {
		err = p.s.door.checkStored(&e, m.Subject, p.o.Clock.Now(), m.Time)
	}
	if r := telemetry.ReasonOf(err); err != nil {
		if r.IsSkip() {
			c.Skip(r)
			p.floor.markDone(seq, "")
			return
		}
		if r == "" {
			r = telemetry.ReasonInvalidJSON
		}
		c.Reject(r)
		l.reason, l.detail = r, telemetry.DetailOf(err)
		p.deadLetterFetched(ctx, l, attempt)
		return
	}
	e.Seq = seq
	p.events = append(p.events[:0], e)
	err = p.h.Handle(ctx, p.events)
	if telemetry.HandledCount(err, 1) == 1 {
		c.AddDelivered(1)
		p.floor.markDone(seq, "")
		return
	}
	c.AddHandlerErrors(1)
	if killswitch.IsPermanent(err) || attempt >= uint64(p.o.MaxDeliver) {
		c.Reject(telemetry.ReasonHandlerFailed)
		l.reason, l.detail = telemetry.ReasonHandlerFailed, err.Error()
		p.deadLetterFetched(ctx, l, attempt)
		return
	}
	p.floor.markFailed(seq, attempt, p.o.Clock.Now())
}

func (p *jsProcessor) deadLetterFetched(ctx context.Context, l deadLetter, attempt uint64) {
	if err := p.s.dlq.send(ctx, []deadLetter{l})[0]; err != nil {
		p.s.counters.AddDeadLetterFailures(1)
		p.floor.markFailed(l.seq, attempt, p.o.Clock.Now())
		return
	}
	p.s.counters.AddDeadLettered(1)
	p.s.counters.AddTerminated(1)
	p.floor.markDone(l.seq, "")
}
