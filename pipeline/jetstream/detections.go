// Package jetstream is the pipeline's durable hand-off on NATS JetStream: the detections
// stream between ingest and respond (detections published with their ID as Nats-Msg-Id,
// consumed per vendor with bounded retries and a page as the last resort), the detector
// checkpoints in an object store with the telemetry stream position they cover (and the
// catch-up after a restart), and the events other automation subscribes to.
package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"

	"github.com/killswitch-dev/killswitch"
	actnats "github.com/killswitch-dev/killswitch/actions/nats"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"
	"go.uber.org/zap"
)

// The detections stream.
const (
	// DetectionsStream holds every detection, published with its ID as Nats-Msg-Id.
	DetectionsStream = "KILLSWITCH_DETECTIONS"
	// DetectionsSubjectPrefix is followed by the vendor: killswitch.detections.<vendor>.
	DetectionsSubjectPrefix = "killswitch.detections"
	// RespondConsumer is the durable consumer of the detections stream.
	RespondConsumer = "killswitch-respond"
)

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

// Sink returns the detectors.Sink that stores detections durably in the detections
// stream: give it to the pipeline (Config.Sink).
func Sink(js jetstream.JetStream, m *metrics.Metrics) detectors.Sink {
	return detectors.SinkFunc(func(ctx context.Context, d detectors.Detection) error {
		data, err := json.Marshal(d)
		if err != nil {
			return killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("pipeline: encode detection: %w", err))
		}
		ack, err := js.Publish(ctx, DetectionsSubjectPrefix+"."+actnats.SubjectToken(d.Vendor), data, jetstream.WithMsgID(d.ID))
		if err != nil {
			return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("pipeline: store detection %s: %w", d.ID, err))
		}
		if m != nil && !ack.Duplicate {
			m.Detections.WithLabelValues(string(d.Detector), string(d.Severity)).Inc()
		}
		return nil
	})
}

// RespondConfig configures Respond.
type RespondConfig struct {
	// JS reads the detections stream.
	JS jetstream.JetStream
	// Responder handles the detections (a *pipeline.Responder, or a cluster's wrapper).
	Responder DetectionHandler
	// Group, if set, makes the instance one member of a partitioned consumer group of
	// the detections stream instead of reading the durable consumer: each vendor's
	// detections go to the member owning its partition.
	Group *Group
	// Pager pages a human when a detection cannot be handled.
	Pager Pager
	// PageAfter is how many deliveries of one detection fail before a human is paged
	// with it instead (its handling is not retried any more). Default 20.
	PageAfter int
	// MaxPerVendor bounds the detections of one vendor waiting for their turn; beyond
	// it, new ones are handed back for later so that one stuck vendor never starves the
	// others. Default 16.
	MaxPerVendor int
	// MaxInFlight bounds the detections received and not yet acknowledged. Default 1024.
	MaxInFlight int
	// AckWait is how long JetStream waits for news of a detection before it redelivers
	// it. While a detection waits for its turn or is being handled, its progress is
	// signalled every AckWait/3, so a slow Vault never causes a redelivery; a crashed
	// instance's detections are redelivered after at most AckWait. Default 15s.
	AckWait time.Duration
	Log     *zap.Logger
	Metrics *metrics.Metrics
}

// DetectionHandler handles one detection (pipeline.Responder does).
type DetectionHandler interface {
	Handle(ctx context.Context, d detectors.Detection) error
}

// Group names a member of the detections stream's partitioned consumer group.
type Group struct {
	// Name is the group's name; default RespondConsumer.
	Name string
	// Member is this instance's member name.
	Member string
	// Partitions is the number of partitions (the telemetry group's).
	Partitions int
}

// detectionsPartitioning partitions detections by vendor (killswitch.detections.<vendor>),
// with the same hash as telemetry.
var detectionsPartitioning = []pcgroups.PartitioningFilter{{Filter: DetectionsSubjectPrefix + ".*", PartitioningWildcards: []int{1}}}

// Create creates the detections stream's consumer group (or checks the existing one
// partitions the same way) and returns its name.
func (g Group) Create(ctx context.Context, js jetstream.JetStream) (string, error) {
	name := g.name()
	if err := telnats.RetryUnready(ctx, func() error {
		_, err := pcgroups.CreateElastic(ctx, js, DetectionsStream, name, uint(g.Partitions), detectionsPartitioning, 0, 0)
		return err
	}); err != nil {
		return "", fmt.Errorf("pipeline: consumer group %s on %s (%d partitions): %w", name, DetectionsStream, g.Partitions, err)
	}
	return name, nil
}

func (g Group) name() string {
	if g.Name == "" {
		return RespondConsumer
	}
	return g.Name
}

func (c *RespondConfig) defaults() {
	if c.PageAfter <= 0 {
		c.PageAfter = 20
	}
	if c.MaxPerVendor <= 0 {
		c.MaxPerVendor = 16
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.AckWait <= 0 {
		c.AckWait = 15 * time.Second
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

// Respond consumes the detections stream with a durable consumer and hands each
// detection to the Responder, until ctx is done. Detections are dispatched by vendor:
// one vendor's are handled in order, one at a time, while other vendors proceed, so a
// vendor whose Vault calls hang holds up nobody else. A detection is acknowledged only
// once handled; a failure is retried with growing delays (never forever: after
// PageAfter deliveries a human is paged with it, and only once the page is sent is it
// terminated); a detection that does not decode is terminated and counted. On return,
// detections received and not handled were handed back for redelivery.
func Respond(ctx context.Context, cfg RespondConfig) error {
	cfg.defaults()
	if cfg.Group != nil {
		return respondGroup(ctx, cfg)
	}
	cons, err := cfg.JS.CreateOrUpdateConsumer(ctx, DetectionsStream, jetstream.ConsumerConfig{
		Durable:       RespondConsumer,
		Description:   "Killswitch responder: incidents, playbooks, actions",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1, // bounded by PageAfter: a detection is paged, never dropped
		MaxAckPending: cfg.MaxInFlight,
		FilterSubject: DetectionsSubjectPrefix + ".>",
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("pipeline: consumer %s: %w", RespondConsumer, err)
	}
	d := &dispatcher{cfg: cfg, queues: map[string]*vendorQueue{}, held: map[jetstream.Msg]struct{}{}}
	defer d.wg.Wait()
	d.wg.Add(1)
	go d.heartbeat(ctx)
	for ctx.Err() == nil {
		batch, err := cons.Fetch(64, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			cfg.Log.Warn("detections fetch failed; retrying", zap.Error(err))
			if err := clock.Sleep(ctx, 250*time.Millisecond); err != nil {
				return nil
			}
			continue
		}
		for m := range batch.Messages() {
			d.dispatch(ctx, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			cfg.Log.Debug("detections fetch ended", zap.Error(err))
		}
	}
	return nil
}

// respondGroup is Respond as a member of the detections' consumer group.
func respondGroup(ctx context.Context, cfg RespondConfig) error {
	g := *cfg.Group
	d := &dispatcher{cfg: cfg, queues: map[string]*vendorQueue{}, held: map[jetstream.Msg]struct{}{}}
	defer d.wg.Wait()
	d.wg.Add(1)
	go d.heartbeat(ctx)
	cc, err := pcgroups.ElasticConsume(ctx, cfg.JS, DetectionsStream, g.name(), g.Member, func(m jetstream.Msg) { d.dispatch(ctx, m) },
		jetstream.ConsumerConfig{
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       cfg.AckWait,
			MaxDeliver:    -1, // bounded by PageAfter: a detection is paged, never dropped
			MaxAckPending: cfg.MaxInFlight,
			Description:   "Killswitch responder, partitioned by vendor",
		})
	if err != nil {
		return fmt.Errorf("pipeline: consume group %s as %s: %w", g.name(), g.Member, err)
	}
	defer cc.Stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-cc.Done():
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("the group was deleted")
		}
		return fmt.Errorf("pipeline: consumer group %s: %w", g.name(), err)
	}
}

// dispatcher runs one worker per vendor with detections waiting.
type dispatcher struct {
	cfg RespondConfig
	wg  sync.WaitGroup

	mu     sync.Mutex
	queues map[string]*vendorQueue
	held   map[jetstream.Msg]struct{} // received, not yet acknowledged or handed back
}

// heartbeat signals progress on every detection held, every AckWait/3, until ctx is done.
func (ds *dispatcher) heartbeat(ctx context.Context) {
	defer ds.wg.Done()
	t := time.NewTicker(ds.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ds.mu.Lock()
		held := make([]jetstream.Msg, 0, len(ds.held))
		for m := range ds.held {
			held = append(held, m)
		}
		ds.mu.Unlock()
		for _, m := range held {
			if err := m.InProgress(); err != nil {
				ds.cfg.Log.Debug("in-progress signal failed", zap.String("subject", m.Subject()), zap.Error(err))
			}
		}
	}
}

// release stops the heartbeat of m: it was acknowledged, handed back or terminated.
func (ds *dispatcher) release(m jetstream.Msg) {
	ds.mu.Lock()
	delete(ds.held, m)
	ds.mu.Unlock()
}

// vendorQueue is one vendor's detections waiting for their turn.
type vendorQueue struct {
	items []item
}

type item struct {
	m jetstream.Msg
	d detectors.Detection
}

// dispatch decodes a detection and queues it for its vendor, starting the vendor's
// worker when none runs.
func (ds *dispatcher) dispatch(ctx context.Context, m jetstream.Msg) {
	var d detectors.Detection
	// A sensor silent for every vendor has no vendor (its subject's vendor token is "_").
	if err := json.Unmarshal(m.Data(), &d); err != nil || d.ID == "" || d.Vendor == "" && d.Sensor == "" {
		ds.cfg.Log.Error("a stored detection does not decode: terminated", zap.String("subject", m.Subject()), zap.Error(err))
		ds.count("undecodable")
		if err := m.Term(); err != nil {
			ds.cfg.Log.Warn("terminate failed (it will be redelivered and terminated again)", zap.Error(err))
		}
		return
	}
	ds.mu.Lock()
	q, running := ds.queues[d.Vendor]
	if running && len(q.items) >= ds.cfg.MaxPerVendor {
		ds.mu.Unlock()
		// This vendor is stuck behind its own slow work: hand it back for later rather
		// than let it hold the consumer's whole in-flight window.
		ds.count("vendor_backlog")
		if err := m.NakWithDelay(5 * time.Second); err != nil {
			ds.cfg.Log.Warn("nak failed (it will be redelivered after the ack wait)", zap.String("detection", d.ID), zap.Error(err))
		}
		return
	}
	if !running {
		q = &vendorQueue{}
		ds.queues[d.Vendor] = q
	}
	q.items = append(q.items, item{m: m, d: d})
	ds.held[m] = struct{}{}
	ds.mu.Unlock()
	if !running {
		ds.wg.Add(1)
		go ds.work(ctx, d.Vendor)
	}
}

// work handles a vendor's detections in order until its queue is empty.
func (ds *dispatcher) work(ctx context.Context, vendor string) {
	defer ds.wg.Done()
	for {
		ds.mu.Lock()
		q := ds.queues[vendor]
		if len(q.items) == 0 {
			delete(ds.queues, vendor)
			ds.mu.Unlock()
			return
		}
		it := q.items[0]
		q.items = q.items[1:]
		ds.mu.Unlock()
		if ctx.Err() != nil {
			// Shutting down: hand it back for prompt redelivery after the restart.
			if err := it.m.Nak(); err != nil {
				ds.cfg.Log.Debug("nak on shutdown failed (redelivered after the ack wait)", zap.Error(err))
			}
			ds.release(it.m)
			continue
		}
		ds.handle(ctx, it)
		ds.release(it.m)
	}
}

func (ds *dispatcher) handle(ctx context.Context, it item) {
	m, d := it.m, it.d
	err := ds.cfg.Responder.Handle(ctx, d)
	if err == nil {
		if err := m.DoubleAck(ctx); err != nil {
			ds.cfg.Log.Warn("detection ack failed (it will be handled again, idempotently)", zap.String("detection", d.ID), zap.Error(err))
		}
		return
	}
	if ctx.Err() != nil {
		// Shutting down: hand it back for prompt redelivery after the restart.
		if err := m.Nak(); err != nil {
			ds.cfg.Log.Debug("nak on shutdown failed (redelivered after the ack wait)", zap.String("detection", d.ID), zap.Error(err))
		}
		return
	}
	delivered := uint64(1)
	if md, merr := m.Metadata(); merr == nil {
		delivered = md.NumDelivered
	}
	if killswitch.IsPermanent(err) || delivered >= uint64(ds.cfg.PageAfter) {
		ds.cfg.Log.Error("detection could not be handled: paging a human", zap.String("detection", d.ID),
			zap.Uint64("deliveries", delivered), zap.String("cause", string(killswitch.ReasonOf(err))), zap.Error(err))
		if perr := ds.cfg.Pager.Page(ctx, d.Vendor, map[string]any{"page": true, "detection": d, "error": err.Error(), "deliveries": delivered}); perr != nil {
			// Not paged: keep it, try again later. Nothing is dropped unseen.
			ds.cfg.Log.Error("page failed: the detection will be retried", zap.String("detection", d.ID), zap.Error(perr))
			ds.count("page_failed")
			ds.nak(m, d, time.Minute)
			return
		}
		ds.count("paged")
		if err := m.Term(); err != nil {
			ds.cfg.Log.Warn("terminate failed (it will be redelivered and paged again)", zap.String("detection", d.ID), zap.Error(err))
		}
		return
	}
	delay := min(time.Duration(1<<min(delivered, 6))*time.Second, time.Minute)
	ds.cfg.Log.Warn("detection handling failed; it will be retried", zap.String("detection", d.ID), zap.Duration("in", delay),
		zap.String("cause", string(killswitch.ReasonOf(err))), zap.Error(err))
	ds.count("retried")
	ds.nak(m, d, delay)
}

func (ds *dispatcher) nak(m jetstream.Msg, d detectors.Detection, delay time.Duration) {
	if err := m.NakWithDelay(delay); err != nil {
		ds.cfg.Log.Warn("nak failed (it will be redelivered after the ack wait)", zap.String("detection", d.ID), zap.Error(err))
	}
}

func (ds *dispatcher) count(outcome string) {
	if ds.cfg.Metrics != nil {
		ds.cfg.Metrics.RespondFailures.WithLabelValues(outcome).Inc()
	}
}

// Pager tells a human that something needs them now.
type Pager = pipeline.Pager

// NotifyPager pages on the notification subject of the vendor (killswitch.notify.<vendor>,
// where notify actions publish too), and confirms the server received the page.
type NotifyPager struct {
	NC *nats.Conn
}

// Page publishes v as JSON and flushes, so an error means the page was not sent.
func (p NotifyPager) Page(ctx context.Context, vendor string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if err := p.NC.Publish(actnats.NotifySubject(vendor), b); err != nil {
		return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("page: %w", err))
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.NC.FlushWithContext(fctx); err != nil {
		return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("page: %w", err))
	}
	return nil
}
