package service

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/pipeline"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// respondMaxDeliver bounds how often one detection is handled before a human is paged
// with it instead (never retried forever).
const respondMaxDeliver = 20

// respond consumes the detections stream with a durable consumer and hands each
// detection to the responder; a detection is acknowledged only once handled.
func (s *Service) respond(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, pipeline.DetectionsStream, jetstream.ConsumerConfig{
		Durable:       "killswitch-respond",
		Description:   "Killswitch responder: incidents, playbooks, actions",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       5 * time.Minute,
		MaxDeliver:    respondMaxDeliver,
		MaxAckPending: 256,
		FilterSubject: pipeline.DetectionsSubjectPrefix + ".>",
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(32, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("detections fetch failed; retrying", zap.Error(err))
			time.Sleep(250 * time.Millisecond)
			continue
		}
		for m := range batch.Messages() {
			s.handleDetection(ctx, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			s.log.Debug("detections fetch ended", zap.Error(err))
		}
	}
	return nil
}

func (s *Service) handleDetection(ctx context.Context, m jetstream.Msg) {
	var d detectors.Detection
	if err := json.Unmarshal(m.Data(), &d); err != nil || d.ID == "" {
		s.log.Error("a stored detection does not decode: terminated", zap.Error(err))
		_ = m.Term()
		return
	}
	err := s.resp.Handle(ctx, d)
	if err == nil {
		if err := m.DoubleAck(ctx); err != nil {
			s.log.Warn("detection ack failed (it will be handled again, idempotently)", zap.String("detection", d.ID), zap.Error(err))
		}
		return
	}
	if ctx.Err() != nil {
		return // shutting down: left unacknowledged, redelivered after the restart
	}
	md, _ := m.Metadata()
	delivered := uint64(1)
	if md != nil {
		delivered = md.NumDelivered
	}
	if delivered >= respondMaxDeliver {
		s.log.Error("detection could not be handled: paging a human", zap.String("detection", d.ID), zap.Uint64("deliveries", delivered), zap.Error(err))
		b, _ := json.Marshal(map[string]any{"page": true, "detection": d, "error": err.Error()})
		_ = s.nc.Publish(actions.NotifySubjectPrefix+"."+pipeline.SubjectToken(d.Vendor), b)
		_ = m.Term()
		return
	}
	delay := min(time.Duration(1<<min(delivered, 6))*time.Second, time.Minute)
	s.log.Warn("detection handling failed; it will be retried", zap.String("detection", d.ID), zap.Duration("in", delay), zap.Error(err))
	_ = m.NakWithDelay(delay)
}
