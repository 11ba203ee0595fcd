package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig configures the JetStream ledger.
type StreamConfig struct {
	// Name is the stream name. Default KILLSWITCH_LEDGER.
	Name string
	// Subject records are published on. Default killswitch.ledger.
	Subject string
	// Replicas is the stream's replica count; 3 across failure domains in production.
	// Default 1.
	Replicas int
	// Duplicates is the window within which an entry appended twice is stored once.
	// Default 24h.
	Duplicates time.Duration
}

func (c *StreamConfig) defaults() {
	if c.Name == "" {
		c.Name = "KILLSWITCH_LEDGER"
	}
	if c.Subject == "" {
		c.Subject = "killswitch.ledger"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = 24 * time.Hour
	}
}

// Stream is the ledger on a JetStream stream. The stream denies deletes and purges, so
// the chain sequence equals the stream sequence. Several writers (processes) may share
// a stream: each append states the sequence it expects to follow, and a writer that
// lost the race reloads the tail and links again. It is safe for concurrent use.
type Stream struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    StreamConfig

	mu   sync.Mutex
	seq  uint64
	prev string
}

// jsWrongLastSequence is the JetStream API error code for a failed expected-last-sequence check.
const jsWrongLastSequence = 10071

// OpenStream creates (or updates) the ledger stream and loads the chain's tail.
func OpenStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (*Stream, error) {
	cfg.defaults()
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "Killswitch audit ledger: append-only, hash-chained",
		Subjects:    []string{cfg.Subject},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  cfg.Duplicates,
		DenyDelete:  true,
		DenyPurge:   true,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: create stream %s: %w", ErrUnavailable, cfg.Name, err)
	}
	s := &Stream{js: js, stream: st, cfg: cfg}
	if err := s.loadTail(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// loadTail reads the last record so the next append links to it.
func (s *Stream) loadTail(ctx context.Context) error {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("%w: stream info: %w", ErrUnavailable, err)
	}
	last := info.State.LastSeq
	if last == 0 {
		s.seq, s.prev = 0, Genesis
		return nil
	}
	msg, err := s.stream.GetMsg(ctx, last)
	if err != nil {
		return fmt.Errorf("%w: read record %d: %w", ErrUnavailable, last, err)
	}
	r, err := DecodeRecord(msg.Data)
	if err != nil {
		return err
	}
	if r.Seq != last {
		return fmt.Errorf("%w at record %d: stored at stream sequence %d", ErrBroken, r.Seq, last)
	}
	s.seq, s.prev = r.Seq, r.Hash
	return nil
}

// Append links e to the end of the chain and stores it. An entry whose type and ID were
// appended within the duplicates window is stored once; the stored record is returned.
// Any error means the entry may not be recorded and wraps ErrUnavailable (or ErrBroken
// when the stored chain is damaged).
func (s *Stream) Append(ctx context.Context, e Entry) (Record, error) {
	if err := e.normalize(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		r := link(e, s.seq, s.prev)
		data, err := json.Marshal(r)
		if err != nil {
			return Record{}, fmt.Errorf("ledger: encode record: %w", err)
		}
		ack, err := s.js.Publish(ctx, s.cfg.Subject, data,
			jetstream.WithMsgID(dedupKey(e)),
			jetstream.WithExpectStream(s.cfg.Name),
			jetstream.WithExpectLastSequence(s.seq))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jsWrongLastSequence && attempt < 10 {
			// Another writer appended first: link to its record instead.
			if err := s.loadTail(ctx); err != nil {
				return Record{}, err
			}
			continue
		}
		if err != nil {
			return Record{}, fmt.Errorf("%w: append %s %s: %w", ErrUnavailable, e.Type, e.ID, err)
		}
		if ack.Duplicate {
			msg, err := s.stream.GetMsg(ctx, ack.Sequence)
			if err != nil {
				return Record{}, fmt.Errorf("%w: read duplicate %d: %w", ErrUnavailable, ack.Sequence, err)
			}
			return DecodeRecord(msg.Data)
		}
		s.seq, s.prev = r.Seq, r.Hash
		return r, nil
	}
}

// All iterates over the stored chain from the first record, reading with an ordered
// consumer; it stops at the last record present when it started.
func (s *Stream) All(ctx context.Context) iter.Seq2[Record, error] {
	return ReadStream(ctx, s.stream)
}

// ReadStream iterates over the records of a ledger stream, in order, up to the last
// record present when iteration starts.
func ReadStream(ctx context.Context, st jetstream.Stream) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		info, err := st.Info(ctx)
		if err != nil {
			yield(Record{}, fmt.Errorf("%w: stream info: %w", ErrUnavailable, err))
			return
		}
		last := info.State.LastSeq
		if last == 0 {
			return
		}
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			yield(Record{}, fmt.Errorf("%w: ordered consumer: %w", ErrUnavailable, err))
			return
		}
		for {
			batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				yield(Record{}, fmt.Errorf("%w: fetch: %w", ErrUnavailable, err))
				return
			}
			n := 0
			for msg := range batch.Messages() {
				n++
				md, err := msg.Metadata()
				if err != nil {
					yield(Record{}, fmt.Errorf("%w: metadata: %w", ErrUnavailable, err))
					return
				}
				r, err := DecodeRecord(msg.Data())
				if err != nil {
					err = fmt.Errorf("stream sequence %d: %w", md.Sequence.Stream, err)
				} else if r.Seq != md.Sequence.Stream {
					err = fmt.Errorf("%w at record %d: stored at stream sequence %d", ErrBroken, r.Seq, md.Sequence.Stream)
				}
				if !yield(r, err) || err != nil {
					return
				}
				if md.Sequence.Stream >= last {
					return
				}
			}
			if err := batch.Error(); err != nil {
				yield(Record{}, fmt.Errorf("%w: fetch: %w", ErrUnavailable, err))
				return
			}
			if n == 0 {
				yield(Record{}, fmt.Errorf("%w: stream ended before sequence %d", ErrUnavailable, last))
				return
			}
		}
	}
}
