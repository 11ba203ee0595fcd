package jetstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// The checkpoint store.
const (
	// StateBucket is the object store holding detector checkpoints.
	StateBucket = "killswitch_state"
	// detectorsObject is the checkpoint's object name; its metadata holds the stream
	// sequence it covers.
	detectorsObject = "detectors"
	seqMetadata     = "telemetry-seq"
)

// Checkpoints keeps detector checkpoints in a JetStream object store, each with the
// telemetry stream sequence it covers. It implements pipeline.Checkpointer.
type Checkpoints struct {
	store jetstream.ObjectStore
}

var _ pipeline.Checkpointer = (*Checkpoints)(nil)

// OpenCheckpoints creates (or opens) the checkpoint bucket.
func OpenCheckpoints(ctx context.Context, js jetstream.JetStream, replicas int) (*Checkpoints, error) {
	store, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      StateBucket,
		Description: "Killswitch detector checkpoints",
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
	})
	if err != nil {
		return nil, fmt.Errorf("pipeline: object store %s: %w", StateBucket, err)
	}
	return &Checkpoints{store: store}, nil
}

// Checkpoint implements pipeline.Checkpointer.
func (c *Checkpoints) Checkpoint(ctx context.Context, seq uint64, write func(io.Writer) error) error {
	return c.Put(ctx, detectorsObject, seq, write)
}

// Put stores, as object name, the state write writes, covering telemetry stream
// sequence seq.
func (c *Checkpoints) Put(ctx context.Context, name string, seq uint64, write func(io.Writer) error) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	_, err := c.store.Put(ctx, jetstream.ObjectMeta{
		Name:     name,
		Metadata: map[string]string{seqMetadata: strconv.FormatUint(seq, 10)},
	}, pr)
	pr.CloseWithError(err) // unblocks the writer when Put gave up early
	if err != nil {
		return fmt.Errorf("pipeline: checkpoint %s: %w", name, err)
	}
	return nil
}

// Get returns checkpoint name and the sequence it covers; found is false when there
// is none.
func (c *Checkpoints) Get(ctx context.Context, name string) (data []byte, seq uint64, found bool, err error) {
	obj, err := c.store.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("pipeline: read checkpoint %s: %w", name, err)
	}
	defer obj.Close()
	info, err := obj.Info()
	if err != nil {
		return nil, 0, false, fmt.Errorf("pipeline: checkpoint %s: %w", name, err)
	}
	if seq, err = strconv.ParseUint(info.Metadata[seqMetadata], 10, 64); err != nil {
		return nil, 0, false, fmt.Errorf("pipeline: checkpoint %s has no valid %s: %w", name, seqMetadata, err)
	}
	if data, err = io.ReadAll(obj); err != nil {
		return nil, 0, false, fmt.Errorf("pipeline: read checkpoint %s: %w", name, err)
	}
	return data, seq, true, nil
}

// RecoverConfig says what Recover works on.
type RecoverConfig struct {
	// Pipeline is the pipeline whose detectors are restored and whose ingest catches up.
	Pipeline *pipeline.Pipeline
	// Checkpoints holds the last checkpoint.
	Checkpoints *Checkpoints
	// Stream and Consumer are the telemetry stream and its durable consumer.
	Stream   jetstream.Stream
	Consumer jetstream.Consumer
	// NewDecoder makes the decoder of the catch-up; it must match the source's. Default
	// the native JSON decoder.
	NewDecoder func() telemetry.Decoder
	// Admission and VendorToken must match the source's: the catch-up admits what the
	// source admitted, each event time bounded against the time its message was stored.
	// nil Admission, for a source without a door, bounds no event time (names are
	// still validated, as by telemetry.DefaultAdmission()).
	Admission   *telemetry.Admission
	VendorToken int
	Log         *zap.Logger
}

// Recover restores the last checkpoint and replays, from the telemetry stream, the events
// after it that the consumer had already acknowledged (they will not be redelivered), so
// that no event acknowledged before a crash is missing from the detector state. Their
// detections are made again with the same IDs and de-duplicated by the detections
// stream. Call it before the telemetry source starts.
func Recover(ctx context.Context, rc RecoverConfig) error {
	log := rc.Log
	if log == nil {
		log = zap.NewNop()
	}
	var covered uint64
	obj, err := rc.Checkpoints.store.Get(ctx, detectorsObject)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		log.Info("no detector checkpoint: starting with empty state")
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
		err = rc.Pipeline.Engine().Restore(ctx, obj)
		obj.Close()
		if err != nil {
			return fmt.Errorf("pipeline: restore checkpoint: %w", err)
		}
		log.Info("detector state restored", zap.Uint64("covers_seq", covered), zap.Int64("bytes", int64(info.Size)))
	}
	ci, err := rc.Consumer.Info(ctx)
	if err != nil {
		return fmt.Errorf("pipeline: consumer info: %w", err)
	}
	acked := ci.AckFloor.Stream
	in := rc.Pipeline.Ingest()
	ref := telnats.ReferenceStreamTime
	if rc.Admission == nil {
		ref = telnats.ReferenceNone
	}
	if acked > covered {
		// Bad messages were dead-lettered the first time: the range skips them.
		catchUp := &telnats.StreamRange{Stream: rc.Stream, FromSeq: covered + 1, ToSeq: acked, NewDecoder: rc.NewDecoder,
			BatchSize: 1000, Logger: log, Admission: rc.Admission, VendorToken: rc.VendorToken, Reference: ref}
		if err := catchUp.Run(ctx, telemetry.HandlerFunc(in.Submit)); err != nil && !errors.Is(err, telnats.ErrEmptyRange) {
			return fmt.Errorf("pipeline: catch-up: %w", err)
		}
		log.Info("caught up from the telemetry stream", zap.Uint64("from", covered+1), zap.Uint64("to", acked),
			zap.Uint64("events", catchUp.Counters.Snapshot().Delivered))
	}
	in.Resume(covered, acked)
	return nil
}
