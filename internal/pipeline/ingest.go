// Package pipeline wires the stages together: Ingest (telemetry → detectors → durable
// detections) and Responder (detection → incident → playbooks → actions → ledger). The
// service runs Ingest behind a JetStream consumer and Responder behind another; replay
// drives the very same Responder in process with a virtual clock.
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/metrics"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Stream and bucket names the service uses.
const (
	// DetectionsStream holds every detection, published with its ID as Nats-Msg-Id.
	DetectionsStream = "KILLSWITCH_DETECTIONS"
	// DetectionsSubjectPrefix is followed by the vendor: killswitch.detections.<vendor>.
	DetectionsSubjectPrefix = "killswitch.detections"
	// StateBucket is the object store holding detector checkpoints.
	StateBucket = "killswitch_state"
	// detectorsObject is the checkpoint's object name; its metadata holds the stream
	// sequence it covers.
	detectorsObject = "detectors"
	seqMetadata     = "telemetry-seq"
)

// SubjectToken makes s safe as one NATS subject token.
func SubjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f:
			return '_'
		}
		return r
	}, s)
}

// EnsureDetectionsStream creates or updates the detections stream: file storage, a
// one-hour duplicate window (so a detection re-made after a crash is stored once).
func EnsureDetectionsStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DetectionsStream,
		Description: "Killswitch detections, de-duplicated by detection ID",
		Subjects:    []string{DetectionsSubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      30 * 24 * time.Hour,
		Duplicates:  time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("pipeline: stream %s: %w", DetectionsStream, err)
	}
	return st, nil
}

// IngestConfig configures the ingest stage.
type IngestConfig struct {
	// Engine is the detectors engine; Ingest is its only submitter.
	Engine *detectors.Sharded
	// JS publishes detections and stores checkpoints.
	JS jetstream.JetStream
	// CheckpointEvery is how often (by Clock) detector state is checkpointed. Default 30s.
	CheckpointEvery time.Duration
	// Replicas for the checkpoint bucket. Default 1.
	Replicas int
	// NewDecoder makes the decoder used to catch up from the stream; it must match the
	// source's. Default: the native JSON decoder.
	NewDecoder func() telemetry.Decoder
	Clock      clock.Clock
	Log        *zap.Logger
	Metrics    *metrics.Metrics
}

// Ingest is the telemetry Handler of the service: it hands each batch to the detectors
// and returns (so the source acknowledges it) only once the batch's detections are
// stored in the detections stream. It checkpoints detector state with the stream
// sequence it covers, and after a restart catches up from that checkpoint so that no
// event acknowledged before a crash is missing from the state.
type Ingest struct {
	cfg   IngestConfig
	store jetstream.ObjectStore

	mu         sync.Mutex // one batch at a time (the source never calls concurrently)
	maxSeq     uint64     // highest stream sequence handed to the engine
	skipUpTo   uint64     // events at or below this are already in the restored state
	checkedAt  time.Time
	checkpoint uint64 // sequence covered by the last checkpoint
}

// NewIngest creates the checkpoint bucket and returns the stage. Call Recover before
// the source starts.
func NewIngest(ctx context.Context, cfg IngestConfig) (*Ingest, error) {
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = 30 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	store, err := cfg.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      StateBucket,
		Description: "Killswitch detector checkpoints",
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, cfg.Replicas),
	})
	if err != nil {
		return nil, fmt.Errorf("pipeline: object store %s: %w", StateBucket, err)
	}
	return &Ingest{cfg: cfg, store: store, checkedAt: cfg.Clock.Now()}, nil
}

// Sink returns the detectors.Sink that stores detections durably: pass it to
// detectors.NewSharded.
func Sink(js jetstream.JetStream, m *metrics.Metrics) detectors.Sink {
	return detectors.SinkFunc(func(ctx context.Context, d detectors.Detection) error {
		data, err := json.Marshal(d)
		if err != nil {
			return telemetry.Permanent(fmt.Errorf("pipeline: encode detection: %w", err))
		}
		ack, err := js.Publish(ctx, DetectionsSubjectPrefix+"."+SubjectToken(d.Vendor), data, jetstream.WithMsgID(d.ID))
		if err != nil {
			return fmt.Errorf("pipeline: store detection %s: %w", d.ID, err)
		}
		if m != nil && !ack.Duplicate {
			m.Detections.WithLabelValues(string(d.Detector), string(d.Severity)).Inc()
		}
		return nil
	})
}

// Recover restores the last checkpoint and replays, from the telemetry stream, the
// events after it that the consumer had already acknowledged (they will not be
// redelivered). Their detections are made again with the same IDs and de-duplicated by
// the detections stream.
func (in *Ingest) Recover(ctx context.Context, stream jetstream.Stream, consumer jetstream.Consumer) error {
	var covered uint64
	obj, err := in.store.Get(ctx, detectorsObject)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		in.cfg.Log.Info("no detector checkpoint: starting with empty state")
	case err != nil:
		return fmt.Errorf("pipeline: read checkpoint: %w", err)
	default:
		info, ierr := obj.Info()
		if ierr != nil {
			obj.Close()
			return fmt.Errorf("pipeline: checkpoint info: %w", ierr)
		}
		covered, err = strconv.ParseUint(info.Metadata[seqMetadata], 10, 64)
		if err != nil {
			obj.Close()
			return fmt.Errorf("pipeline: checkpoint has no valid %s: %w", seqMetadata, err)
		}
		err = in.cfg.Engine.Restore(ctx, obj)
		obj.Close()
		if err != nil {
			return fmt.Errorf("pipeline: restore checkpoint: %w", err)
		}
		in.cfg.Log.Info("detector state restored", zap.Uint64("covers_seq", covered), zap.Int64("bytes", int64(info.Size)))
	}
	ci, err := consumer.Info(ctx)
	if err != nil {
		return fmt.Errorf("pipeline: consumer info: %w", err)
	}
	acked := ci.AckFloor.Stream
	if acked > covered {
		n, err := in.catchUp(ctx, stream, covered+1, acked)
		if err != nil {
			return err
		}
		in.cfg.Log.Info("caught up from the telemetry stream", zap.Uint64("from", covered+1), zap.Uint64("to", acked), zap.Int("events", n))
	}
	in.mu.Lock()
	in.skipUpTo = max(covered, acked)
	in.maxSeq = in.skipUpTo
	in.checkpoint = covered
	in.mu.Unlock()
	return nil
}

// catchUp feeds stream messages from..to (inclusive) to the engine.
func (in *Ingest) catchUp(ctx context.Context, stream jetstream.Stream, from, to uint64) (int, error) {
	oc, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		return 0, fmt.Errorf("pipeline: catch-up consumer: %w", err)
	}
	var dec telemetry.Decoder = telemetry.NewJSONDecoder(telemetry.DecodeOptions{})
	if in.cfg.NewDecoder != nil {
		dec = in.cfg.NewDecoder()
	}
	batch := make([]telemetry.Event, 0, 1000)
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := in.submit(ctx, batch)
		n += len(batch)
		batch = batch[:0]
		return err
	}
	for {
		msgs, err := oc.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return n, fmt.Errorf("pipeline: catch-up fetch: %w", err)
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return n, fmt.Errorf("pipeline: catch-up metadata: %w", err)
			}
			if md.Sequence.Stream > to {
				return n, flush()
			}
			var e telemetry.Event
			if dec.Decode(m.Data(), &e) == nil { // bad messages were dead-lettered the first time
				e.Seq = md.Sequence.Stream
				batch = append(batch, e)
			}
			if md.Sequence.Stream == to {
				return n, flush()
			}
		}
		if err := msgs.Error(); err != nil {
			return n, fmt.Errorf("pipeline: catch-up fetch: %w", err)
		}
		if got == 0 {
			return n, fmt.Errorf("pipeline: catch-up: stream ended before sequence %d", to)
		}
		if err := flush(); err != nil {
			return n, err
		}
	}
}

// Handle implements telemetry.Handler.
func (in *Ingest) Handle(ctx context.Context, batch []telemetry.Event) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	evs := batch
	if in.skipUpTo > 0 {
		// Redeliveries of events the restored state already holds: acknowledge, don't count twice.
		evs = evs[:0:0]
		for i := range batch {
			if batch[i].Seq == 0 || batch[i].Seq > in.skipUpTo {
				evs = append(evs, batch[i])
			}
		}
	}
	if err := in.submit(ctx, evs); err != nil {
		return err
	}
	for i := range evs {
		in.maxSeq = max(in.maxSeq, evs[i].Seq)
	}
	if in.cfg.Metrics != nil {
		in.cfg.Metrics.Events.Add(float64(len(evs)))
	}
	if in.cfg.Clock.Now().Sub(in.checkedAt) >= in.cfg.CheckpointEvery {
		if err := in.checkpointLocked(ctx); err != nil {
			// A missed checkpoint loses nothing: the next one, or the catch-up, covers it.
			in.cfg.Log.Warn("detector checkpoint failed", zap.Error(err))
		}
	}
	return nil
}

// submit hands events to the engine and waits until their detections are stored.
func (in *Ingest) submit(ctx context.Context, evs []telemetry.Event) error {
	if len(evs) == 0 {
		return nil
	}
	began := in.cfg.Clock.Now()
	done := make(chan error, 1)
	if err := in.cfg.Engine.SubmitBatch(ctx, evs, func(err error) { done <- err }); err != nil {
		return err
	}
	// Wait even if ctx ends: the engine reads evs until it calls back, and it calls back
	// promptly once ctx is done (the sink fails fast).
	err := <-done
	if in.cfg.Metrics != nil && err == nil {
		in.cfg.Metrics.DetectionLatency.Observe(in.cfg.Clock.Now().Sub(began).Seconds())
	}
	return err
}

// Checkpoint stores the detector state now, with the stream sequence it covers.
func (in *Ingest) Checkpoint(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.checkpointLocked(ctx)
}

func (in *Ingest) checkpointLocked(ctx context.Context) error {
	in.checkedAt = in.cfg.Clock.Now()
	if in.maxSeq == in.checkpoint {
		return nil
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(in.cfg.Engine.Snapshot(ctx, pw)) }()
	info, err := in.store.Put(ctx, jetstream.ObjectMeta{
		Name:     detectorsObject,
		Metadata: map[string]string{seqMetadata: strconv.FormatUint(in.maxSeq, 10)},
	}, pr)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("pipeline: checkpoint: %w", err)
	}
	in.checkpoint = in.maxSeq
	in.cfg.Log.Debug("detector checkpoint", zap.Uint64("seq", in.maxSeq), zap.Uint64("bytes", info.Size),
		zap.Duration("took", in.cfg.Clock.Now().Sub(in.checkedAt)))
	return nil
}
