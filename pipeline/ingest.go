package pipeline

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/telemetry"
	"go.uber.org/zap"
)

// Checkpointer stores detector state with the telemetry stream sequence it covers
// (pipeline/jetstream keeps it in a JetStream object store).
type Checkpointer interface {
	// Checkpoint stores the state that write writes, covering stream sequence seq.
	Checkpoint(ctx context.Context, seq uint64, write func(io.Writer) error) error
}

// IngestConfig configures the ingest stage.
type IngestConfig struct {
	// Engine is the detectors engine; Ingest is its only submitter.
	Engine *detectors.Sharded
	// Checkpoints stores detector state every CheckpointEvery; nil never checkpoints.
	Checkpoints Checkpointer
	// CheckpointEvery is how often (by Clock) detector state is checkpointed. Default 30s.
	CheckpointEvery time.Duration
	Clock           clock.Clock
	Log             *zap.Logger
	Metrics         *metrics.Metrics
}

// Ingest is the telemetry Handler of the pipeline: it hands each batch to the detectors
// and returns (so the source acknowledges it) only once the batch's detections were
// handed on (stored in the detections stream in the service; responded to in replay).
// With a Checkpointer it checkpoints detector state with the stream sequence it covers,
// and after Resume it skips the redeliveries of events the restored state already holds.
type Ingest struct {
	cfg IngestConfig

	mu         sync.Mutex // one batch at a time (a source never calls concurrently)
	maxSeq     uint64     // highest stream sequence handed to the engine
	skipUpTo   uint64     // events at or below this are already in the restored state
	checkedAt  time.Time
	checkpoint uint64 // sequence covered by the last checkpoint
}

// NewIngest returns the ingest stage.
func NewIngest(cfg IngestConfig) *Ingest {
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = 30 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Ingest{cfg: cfg, checkedAt: cfg.Clock.Now()}
}

// Resume says what the engine's state holds after a restore and catch-up: every event
// up to stream sequence done, of which the last checkpoint covers those up to covered.
// Redeliveries of events at or below done are acknowledged without being counted again.
func (in *Ingest) Resume(covered, done uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.skipUpTo = max(covered, done)
	in.maxSeq = in.skipUpTo
	in.checkpoint = covered
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
	if in.cfg.Checkpoints != nil && in.cfg.Clock.Now().Sub(in.checkedAt) >= in.cfg.CheckpointEvery {
		if err := in.checkpointLocked(ctx); err != nil {
			// A missed checkpoint loses nothing: the next one, or the catch-up, covers it.
			in.cfg.Log.Warn("detector checkpoint failed", zap.Error(err))
		}
	}
	return nil
}

// Submit hands events to the engine and waits until their detections were handed on.
// Recovery uses it to replay the events acknowledged after the last checkpoint.
func (in *Ingest) Submit(ctx context.Context, evs []telemetry.Event) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.submit(ctx, evs)
}

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
	if in.cfg.Checkpoints == nil || in.maxSeq == in.checkpoint {
		return nil
	}
	if err := in.cfg.Checkpoints.Checkpoint(ctx, in.maxSeq, func(w io.Writer) error {
		return in.cfg.Engine.Snapshot(ctx, w)
	}); err != nil {
		return err
	}
	in.checkpoint = in.maxSeq
	in.cfg.Log.Debug("detector checkpoint", zap.Uint64("seq", in.maxSeq), zap.Duration("took", in.cfg.Clock.Now().Sub(in.checkedAt)))
	return nil
}
