// Package pipeline composes the stages into the one flow that `killswitch run` and
// `killswitch replay` both drive:
//
//	source → Ingest → detectors.Sharded → hand-off → Responder → incidents → playbooks → actions → ledger
//	                                     Tick: silence, incident expiry, approval expiry, telemetry health
//
// Run and replay differ only in their source (a JetStream consumer; a file or a stream
// range), their clock (the wall clock; a virtual clock that follows event time) and the
// hand-off between detection and response: in the service detections are stored durably
// in a JetStream stream and a consumer hands them to the Responder (pipeline/jetstream);
// in replay the Pipeline hands them over directly, in order.
//
// The Responder partitions the work by vendor: a vendor's detections are handled one at
// a time, in order; different vendors never wait for each other.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
	"go.uber.org/zap"
)

// Expirer expires held actions past their approval window and returns the updates of
// their incidents (actions.Approvals).
type Expirer interface {
	Expire(ctx context.Context) ([]actions.Update, error)
}

// Config configures a Pipeline.
type Config struct {
	// Detectors configures the detectors engine.
	Detectors detectors.Config
	// Shards is the number of detector shards. Default 1.
	Shards int
	// Inline runs the detectors on the goroutine that submits (see
	// detectors.WithInline): replay does, for byte-identical reports.
	Inline bool
	// Observer, when set, sees every event after the detectors processed it (replay
	// draws its charts with it).
	Observer detectors.Observer
	// Sink receives the detections; nil hands them directly to the Responder, in order
	// (replay). The service stores them in the detections stream instead and consumes
	// them from there (pipeline/jetstream).
	Sink detectors.Sink
	// Responder configures the response half.
	Responder ResponderConfig
	// Kill, when set, enables kill-vendor and restore (see Killer); its Ledger, Clock,
	// Log and Metrics default to the pipeline's.
	Kill *KillConfig
	// Approvals are expired on every Tick, and their incidents updated; may be nil.
	Approvals Expirer
	// Counters are the telemetry source's counters, for the health figures; may be nil.
	Counters *telemetry.Counters
	// Checkpoints and CheckpointEvery configure detector checkpoints (see IngestConfig).
	Checkpoints     Checkpointer
	CheckpointEvery time.Duration
	// Virtual, when set, is a virtual clock that follows event time: the pipeline sets
	// it to each detection's time before responding and to the time of each Tick
	// (replay). It is then the pipeline's clock, unless Clock is set.
	Virtual *clock.Manual
	// Clock tells the time (the wall clock in the service). Default Virtual, else the
	// wall clock.
	Clock   clock.Clock
	Log     *zap.Logger
	Metrics *metrics.Metrics
}

// Pipeline is the whole flow for one process.
type Pipeline struct {
	cfg       Config
	engine    *detectors.Sharded
	ingest    *Ingest
	responder *Responder
	killer    *Killer

	hmu                        sync.Mutex
	health                     playbooks.Health
	seenReceived, seenRejected uint64 // the source's totals at the previous tick
}

// New builds the pipeline. Close it when done.
func New(cfg Config) (*Pipeline, error) {
	if cfg.Clock == nil {
		if cfg.Virtual != nil {
			cfg.Clock = cfg.Virtual
		} else {
			cfg.Clock = clock.Real{}
		}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	p := &Pipeline{cfg: cfg}
	rc := cfg.Responder
	if rc.Clock == nil {
		rc.Clock = cfg.Clock
	}
	if rc.Health == nil {
		rc.Health = p.Health
	}
	if rc.Metrics == nil {
		rc.Metrics = cfg.Metrics
	}
	if cfg.Kill != nil {
		kc := *cfg.Kill
		if kc.Ledger == nil {
			kc.Ledger = rc.Ledger
		}
		if kc.Clock == nil {
			kc.Clock = cfg.Clock
		}
		if kc.Log == nil {
			kc.Log = cfg.Log.Named("kill")
		}
		if kc.Metrics == nil {
			kc.Metrics = cfg.Metrics
		}
		if kc.Inventory == nil {
			kc.Inventory = rc.Inventory
		}
		p.killer = NewKiller(kc, nil)
		rc.Holds = p.killer
	}
	p.responder = NewResponder(rc)
	if p.killer != nil {
		p.killer.r = p.responder
	}
	sink := cfg.Sink
	if sink == nil {
		sink = detectors.SinkFunc(p.respond)
	}
	opts := []detectors.Option{detectors.WithClock(cfg.Clock), detectors.WithRevocations(p.responder.Revocations())}
	if cfg.Inline {
		opts = append(opts, detectors.WithInline())
	}
	if cfg.Observer != nil {
		opts = append(opts, detectors.WithObserver(cfg.Observer))
	}
	engine, err := detectors.NewSharded(cfg.Detectors, max(1, cfg.Shards), sink, opts...)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p.engine = engine
	p.ingest = NewIngest(IngestConfig{
		Engine: engine, Checkpoints: cfg.Checkpoints, CheckpointEvery: cfg.CheckpointEvery,
		Clock: cfg.Clock, Log: cfg.Log.Named("ingest"), Metrics: cfg.Metrics,
	})
	return p, nil
}

// respond is the direct hand-off: the detection is responded to at once.
func (p *Pipeline) respond(ctx context.Context, d detectors.Detection) error {
	if p.cfg.Virtual != nil {
		p.cfg.Virtual.Set(d.DetectedAt)
	}
	if err := p.responder.Handle(ctx, d); err != nil {
		return fmt.Errorf("pipeline: detection %s: %w", d.ID, err)
	}
	return nil
}

// Killer returns kill-vendor and restore; nil unless Config.Kill was set.
func (p *Pipeline) Killer() *Killer { return p.killer }

// Ingest returns the telemetry handler: give it to the source.
func (p *Pipeline) Ingest() *Ingest { return p.ingest }

// Responder returns the response half: a JetStream consumer of the detections stream
// hands detections to it in the service.
func (p *Pipeline) Responder() *Responder { return p.responder }

// Engine returns the detectors engine (to restore a checkpoint into).
func (p *Pipeline) Engine() *detectors.Sharded { return p.engine }

// Tick runs the processing-time work at now: the silence checks (their detections are
// handed on like any other), incident expiry (in detection time: incidents quiet for
// the cooldown as of the newest event time seen), approval expiry, and the telemetry
// health figures the playbooks see. The service calls it every few seconds with the wall clock;
// replay with event time, every minute of it.
func (p *Pipeline) Tick(ctx context.Context, now time.Time) error {
	if p.cfg.Virtual != nil {
		p.cfg.Virtual.Set(now)
	}
	var errs []error
	if err := p.engine.TickAt(ctx, now); err != nil {
		errs = append(errs, fmt.Errorf("pipeline: silence check: %w", err))
	}
	// Incidents close in detection time: as of the newest event time seen, never later
	// than now (a forged future event time must not close every incident).
	if latest := p.engine.LastTick().Latest; !latest.IsZero() {
		if _, err := p.responder.Expire(ctx, minTime(now, latest)); err != nil {
			errs = append(errs, fmt.Errorf("pipeline: incident expiry: %w", err))
		}
	}
	errs = append(errs, p.TickApprovals(ctx))
	p.refreshHealth(now)
	return errors.Join(errs...)
}

// TickApprovals does the approvals' part of Tick alone: held actions past their
// approval window expire, actions whose veto window ended run, approved actions due
// again are retried. The service calls it every second, so a veto window ends on time.
func (p *Pipeline) TickApprovals(ctx context.Context) error {
	if p.cfg.Approvals == nil {
		return nil
	}
	updates, err := p.cfg.Approvals.Expire(ctx)
	for _, u := range updates {
		p.responder.ActionUpdate(ctx, u)
	}
	if err != nil {
		return fmt.Errorf("pipeline: approval expiry: %w", err)
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Health returns the telemetry health the playbooks see, as of the last Tick.
func (p *Pipeline) Health() playbooks.Health {
	p.hmu.Lock()
	defer p.hmu.Unlock()
	h := p.health
	h.SilentSensors = append([]string(nil), h.SilentSensors...)
	return h
}

// refreshHealth computes the health figures: sensors known and silent (from the
// detectors' last tick), the share of telemetry rejected since the previous tick, and
// how far the newest event trails now.
func (p *Pipeline) refreshHealth(now time.Time) {
	t := p.engine.LastTick()
	h := playbooks.Health{
		SensorsExpected:  t.Sensors,
		SensorsReporting: t.Sensors - len(t.SilentSensors),
		SilentSensors:    t.SilentSensors,
	}
	if !t.Latest.IsZero() && now.After(t.Latest) {
		h.LagSeconds = now.Sub(t.Latest).Seconds()
	}
	p.hmu.Lock()
	defer p.hmu.Unlock()
	if p.cfg.Counters != nil {
		received, rejected := p.cfg.Counters.Totals()
		if n := received - p.seenReceived; n > 0 {
			h.DeadLetterRate = min(1, float64(rejected-p.seenRejected)/float64(n))
		} else {
			h.DeadLetterRate = p.health.DeadLetterRate // nothing new: the last figure stands
		}
		p.seenReceived, p.seenRejected = received, rejected
	}
	p.health = h
}

// Close stops the detectors engine (after the work already submitted).
func (p *Pipeline) Close() error { return p.engine.Close() }
