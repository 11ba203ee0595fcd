package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/metrics"
	pipejs "github.com/killswitch-dev/killswitch/pipeline/jetstream"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// IngestConfig configures Ingest.
type IngestConfig struct {
	// Engine is the detectors engine whose vendors are the owned partitions'.
	Engine *detectors.Sharded
	// Submit hands events to the engine and returns once their detections were handed
	// on (pipeline.Ingest.Submit).
	Submit func(ctx context.Context, evs []telemetry.Event) error
	// Checkpoints stores one checkpoint per partition.
	Checkpoints *pipejs.Checkpoints
	// Stream is the telemetry stream the catch-ups read.
	Stream jetstream.Stream
	// Partitions is the number of partitions.
	Partitions int
	// NewDecoder, Admission and VendorToken must match the telemetry source's, so the
	// catch-up admits what the source admitted.
	NewDecoder  func() telemetry.Decoder
	Admission   *telemetry.Admission
	VendorToken int
	// CheckpointEvery is how often the owned partitions are checkpointed. Default 30s.
	CheckpointEvery time.Duration
	Clock           clock.Clock
	Log             *zap.Logger
	Metrics         *metrics.Metrics
}

// Ingest is the telemetry handler of an instance in a cluster (see the package
// documentation). It is safe for one source and the membership controller to call at
// once.
type Ingest struct {
	cfg IngestConfig

	mu      sync.Mutex
	parts   []partition
	owned   []bool    // nil: not known yet
	ownedAt time.Time // when the owned set last changed
	pos     uint64    // highest telemetry sequence handled
	round   struct {
		at  time.Time
		pos uint64
	}
}

// partition is what the instance knows of one partition.
type partition struct {
	ready bool   // restored and caught up: its events are handled
	base  uint64 // every event at or below it is in the state (checkpoint and catch-up)
	last  uint64 // highest sequence of its events handled
	saved uint64 // sequence the last checkpoint written here covers
}

// covered is the sequence up to which the partition's events are all in the state.
func (p *partition) covered() uint64 { return max(p.base, p.last) }

// NewIngest returns the partitioned ingest.
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
	in := &Ingest{cfg: cfg, parts: make([]partition, cfg.Partitions)}
	in.round.at = cfg.Clock.Now()
	return in
}

// checkpointName names partition p's checkpoint (the partition count is part of it:
// another count partitions differently).
func (in *Ingest) checkpointName(p int) string {
	return fmt.Sprintf("partition-%d-of-%d", p, in.cfg.Partitions)
}

// Own says which partitions the membership gives the instance now. A partition lost is
// checkpointed one last time and dropped from the state; a partition gained is restored
// when its first event arrives.
func (in *Ingest) Own(ctx context.Context, owned []int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := make([]bool, in.cfg.Partitions)
	for _, p := range owned {
		if p >= 0 && p < len(now) {
			now[p] = true
		}
	}
	var lost []int
	for p := range in.parts {
		if in.parts[p].ready && !now[p] {
			lost = append(lost, p)
		}
	}
	in.owned, in.ownedAt = now, in.cfg.Clock.Now()
	if len(lost) == 0 {
		return
	}
	for _, p := range lost {
		if err := in.checkpointLocked(ctx, p, in.parts[p].covered()); err != nil {
			in.cfg.Log.Warn("last checkpoint of a partition moving away failed (its new owner catches up further)", zap.Int("partition", p), zap.Error(err))
		}
		in.parts[p] = partition{}
	}
	if err := in.cfg.Engine.Reshape(ctx, in.keepReady); err != nil {
		in.cfg.Log.Error("dropping the state of the partitions moved away failed", zap.Ints("partitions", lost), zap.Error(err))
	}
	in.cfg.Log.Info("partitions moved away", zap.Ints("partitions", lost))
}

// keepReady keeps the vendors of the ready partitions.
func (in *Ingest) keepReady(vendor string) bool { return in.parts[Of(vendor, in.cfg.Partitions)].ready }

// Handle implements telemetry.Handler.
func (in *Ingest) Handle(ctx context.Context, batch []telemetry.Event) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.owned == nil {
		return killswitch.Retryable(killswitch.ReasonUnavailable, errors.New("cluster: the partitions owned are not known yet"))
	}
	var gain []int
	for i := range batch {
		p := Of(batch[i].Vendor, in.cfg.Partitions)
		if in.owned[p] && !in.parts[p].ready && !slices.Contains(gain, p) {
			gain = append(gain, p)
		}
	}
	if len(gain) > 0 {
		if err := in.gain(ctx, gain); err != nil {
			return killswitch.Retryable(killswitch.ReasonUnavailable, err)
		}
	}
	evs := make([]telemetry.Event, 0, len(batch))
	for i := range batch {
		p := &in.parts[Of(batch[i].Vendor, in.cfg.Partitions)]
		// Not owned (delivered just before a move; the owner's catch-up covers it) or
		// already in the state (a catch-up covered it, or a redelivery): skipped.
		if !p.ready || (batch[i].Seq != 0 && batch[i].Seq <= p.covered()) {
			continue
		}
		evs = append(evs, batch[i])
	}
	if ce := in.cfg.Log.Check(zap.DebugLevel, "telemetry batch"); ce != nil {
		ce.Write(zap.Int("received", len(batch)), zap.Int("handled", len(evs)), zap.Uint64("first_seq", batch[0].Seq))
	}
	if err := in.cfg.Submit(ctx, evs); err != nil {
		// Part of the batch may be in the state: its partitions restart from their
		// checkpoints, so the redelivery is neither lost nor counted twice.
		for i := range evs {
			in.parts[Of(evs[i].Vendor, in.cfg.Partitions)].ready = false
		}
		return err
	}
	for i := range evs {
		p := &in.parts[Of(evs[i].Vendor, in.cfg.Partitions)]
		p.last = max(p.last, evs[i].Seq)
		in.pos = max(in.pos, evs[i].Seq)
	}
	if in.cfg.Metrics != nil {
		in.cfg.Metrics.Events.Add(float64(len(evs)))
	}
	if in.cfg.Clock.Now().Sub(in.round.at) >= in.cfg.CheckpointEvery {
		in.checkpointAllLocked(ctx)
	}
	return nil
}

// gain restores the partitions' checkpoints into the engine and catches up, from the
// telemetry stream, the events after each checkpoint up to the stream's end now.
func (in *Ingest) gain(ctx context.Context, ps []int) error {
	began := in.cfg.Clock.Now()
	var add []io.Reader
	from := uint64(0)
	covers := make(map[int]uint64, len(ps))
	for _, p := range ps {
		data, seq, found, err := in.cfg.Checkpoints.Get(ctx, in.checkpointName(p))
		if err != nil {
			return err
		}
		if found {
			add = append(add, bytes.NewReader(data))
			covers[p] = seq
			if from == 0 || seq+1 < from {
				from = seq + 1
			}
		}
	}
	gaining := func(vendor string) bool { return slices.Contains(ps, Of(vendor, in.cfg.Partitions)) }
	if err := in.cfg.Engine.Reshape(ctx, func(v string) bool { return in.keepReady(v) && !gaining(v) }, add...); err != nil {
		return fmt.Errorf("cluster: restore partitions %v: %w", ps, err)
	}
	info, err := in.cfg.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("cluster: telemetry stream: %w", err)
	}
	end := info.State.LastSeq
	var caught uint64
	if len(covers) > 0 && from <= end {
		ref := telnats.ReferenceStreamTime
		if in.cfg.Admission == nil {
			ref = telnats.ReferenceNone
		}
		catchUp := &telnats.StreamRange{Stream: in.cfg.Stream, FromSeq: from, ToSeq: end, NewDecoder: in.cfg.NewDecoder,
			BatchSize: 1000, Logger: in.cfg.Log, Admission: in.cfg.Admission, VendorToken: in.cfg.VendorToken, Reference: ref}
		err := catchUp.Run(ctx, telemetry.HandlerFunc(func(ctx context.Context, evs []telemetry.Event) error {
			keep := evs[:0]
			for _, ev := range evs {
				p := Of(ev.Vendor, in.cfg.Partitions)
				if seq, ok := covers[p]; ok && ev.Seq > seq {
					keep = append(keep, ev)
				}
			}
			caught += uint64(len(keep))
			return in.cfg.Submit(ctx, keep)
		}))
		if err != nil && !errors.Is(err, telnats.ErrEmptyRange) {
			return fmt.Errorf("cluster: catch-up of partitions %v: %w", ps, err)
		}
	}
	for _, p := range ps {
		// Without a checkpoint nobody handled the partition before (every owner writes
		// one before its first event), so its events are all still to come.
		base := uint64(0)
		if _, ok := covers[p]; ok {
			base = end
		}
		in.parts[p] = partition{ready: true, base: base}
		if err := in.checkpointLocked(ctx, p, base); err != nil {
			in.parts[p].ready = false
			return err
		}
	}
	in.cfg.Log.Info("partitions taken over: state restored and caught up", zap.Ints("partitions", ps),
		zap.Int("checkpoints", len(covers)), zap.Uint64("to_seq", end), zap.Uint64("events_caught_up", caught),
		zap.Duration("took", in.cfg.Clock.Now().Sub(began)))
	return nil
}

// Checkpoint checkpoints every partition the instance handles now.
func (in *Ingest) Checkpoint(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.checkpointAllLocked(ctx)
}

// checkpointAllLocked checkpoints the ready partitions whose coverage moved. A
// partition owned without a change of membership since the previous round also covers
// the position the instance had reached then: every event of it up to there was
// delivered here (in stream order), so an idle partition's checkpoint moves on too.
func (in *Ingest) checkpointAllLocked(ctx context.Context) error {
	now := in.cfg.Clock.Now()
	stable := in.ownedAt.Before(in.round.at)
	var errs []error
	for p := range in.parts {
		part := &in.parts[p]
		if !part.ready {
			continue
		}
		seq := part.covered()
		if stable {
			seq = max(seq, in.round.pos)
			part.base = max(part.base, in.round.pos)
		}
		if seq == part.saved && seq != 0 {
			continue
		}
		errs = append(errs, in.checkpointLocked(ctx, p, seq))
	}
	in.round.at, in.round.pos = now, in.pos
	if err := errors.Join(errs...); err != nil {
		// A missed checkpoint loses nothing: the next one, or a catch-up, covers it.
		in.cfg.Log.Warn("partition checkpoint failed", zap.Error(err))
		return err
	}
	return nil
}

// checkpointLocked writes partition p's state, covering sequence seq.
func (in *Ingest) checkpointLocked(ctx context.Context, p int, seq uint64) error {
	keep := func(v string) bool { return Of(v, in.cfg.Partitions) == p }
	err := in.cfg.Checkpoints.Put(ctx, in.checkpointName(p), seq, func(w io.Writer) error {
		return in.cfg.Engine.SnapshotVendors(ctx, w, keep)
	})
	if err == nil {
		in.parts[p].saved = seq
	}
	return err
}

// Ready returns the partitions whose state the instance holds now.
func (in *Ingest) Ready() []int {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []int
	for p := range in.parts {
		if in.parts[p].ready {
			out = append(out, p)
		}
	}
	return out
}
