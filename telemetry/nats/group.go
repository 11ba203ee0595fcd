package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"
	"go.uber.org/zap"
)

// Group makes a JetStreamSource one member of an elastic partitioned consumer group
// (github.com/synadia-io/orbit.go/pcgroups) shared by several instances: the group's
// work-queue stream sources the telemetry stream with the vendor's partition in front
// of each subject, and each member consumes the partitions the membership gives it, in
// order, pinned to one client. Membership (who is in the group) is managed outside the
// source (AddMembers, DeleteMembers); the source follows it. Messages are acknowledged
// one by one, and each event carries the telemetry stream's own sequence (from the
// Nats-Stream-Source header), not the work queue's.
type Group struct {
	// Name is the consumer group's name. Default "killswitch".
	Name string
	// Member is this instance's member name.
	Member string
	// Partitions is the number of vendor partitions (the most members the group can
	// use); fixed for the life of the group.
	Partitions int
	// AckWait is the member consumer's acknowledgement deadline, also its inactivity
	// threshold and pinning TTL, and (plus 0.5s) how often pcgroups retries creating a
	// member consumer refused during a rebalance. Default 3s (under 2s pinning may flap).
	AckWait time.Duration
}

// DefaultGroup names the consumer group of the telemetry stream.
const DefaultGroup = "killswitch"

func (g *Group) withDefaults() Group {
	c := *g
	if c.Name == "" {
		c.Name = DefaultGroup
	}
	if c.AckWait <= 0 {
		c.AckWait = 3 * time.Second
	}
	return c
}

// PartitionFilters returns the partitioning filters that partition subjects by their
// vendor token (the first wildcard of subject, e.g. egress.> → egress.* and egress.*.>),
// for streams that hold subject alone.
func PartitionFilters(subject string) ([]pcgroups.PartitioningFilter, error) {
	tokens := strings.Split(subject, ".")
	for i, t := range tokens {
		switch t {
		case "*":
			return []pcgroups.PartitioningFilter{{Filter: subject, PartitioningWildcards: []int{1}}}, nil
		case ">":
			prefix := strings.Join(tokens[:i], ".")
			if prefix != "" {
				prefix += "."
			}
			return []pcgroups.PartitioningFilter{
				{Filter: prefix + "*", PartitioningWildcards: []int{1}},
				{Filter: prefix + "*.>", PartitioningWildcards: []int{1}},
			}, nil
		}
	}
	return nil, fmt.Errorf("telemetry: subject %q has no wildcard to partition by", subject)
}

// createGroup creates the elastic group on the stream, or checks the existing one has
// the same partitions and filters.
func (s *JetStreamSource) createGroup(ctx context.Context) error {
	o := s.opts
	g := o.Group.withDefaults()
	if g.Member == "" || g.Partitions < 1 {
		return errors.New("telemetry: a group needs a member name and at least one partition")
	}
	if len(o.Subjects) != 1 {
		return fmt.Errorf("telemetry: a group partitions one subject filter, not %v", o.Subjects)
	}
	filters, err := PartitionFilters(o.Subjects[0])
	if err != nil {
		return err
	}
	if err := RetryUnready(ctx, func() error {
		_, err := pcgroups.CreateElastic(ctx, s.js, o.Stream, g.Name, uint(g.Partitions), filters, 0, 0)
		return err
	}); err != nil {
		return fmt.Errorf("telemetry: consumer group %s on %s (%d partitions): %w", g.Name, o.Stream, g.Partitions, err)
	}
	return nil
}

// consumeGroup starts consuming the member's partitions into push; the membership
// decides which (a member not in it receives nothing until it is added).
func (s *JetStreamSource) consumeGroup(ctx context.Context, push func(jetstream.Msg)) (stop func(), closed <-chan error, err error) {
	o := s.opts
	g := o.Group.withDefaults()
	cc, err := pcgroups.ElasticConsume(ctx, s.js, o.Stream, g.Name, g.Member, push, jetstream.ConsumerConfig{
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       g.AckWait,
		MaxDeliver:    o.MaxDeliver,
		MaxAckPending: o.MaxAckPending,
		Description:   "Killswitch telemetry, partitioned by vendor",
	})
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: consume group %s as %s: %w", g.Name, g.Member, err)
	}
	fatal := make(chan error, 1)
	go func() {
		err := <-cc.Done() // nil after Stop, or when the group was deleted
		if err == nil {
			err = fmt.Errorf("telemetry: consumer group %s ended: %w", g.Name, ErrSourceClosed)
		} else {
			s.log.Warn("telemetry: consumer group member stopped", zap.String("member", g.Member), zap.Error(err))
		}
		fatal <- err
	}()
	return cc.Stop, fatal, nil
}

// sourceSeq returns the sequence in the origin stream of a message copied by stream
// sourcing (header "Nats-Stream-Source: <stream> <seq> …"), 0 when there is none.
func sourceSeq(h nats.Header) uint64 {
	fields := strings.Fields(h.Get("Nats-Stream-Source"))
	if len(fields) < 2 {
		return 0
	}
	n, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// RetryUnready runs f again while it fails because JetStream has nobody to answer yet
// (nats.ErrNoResponders: a stream or bucket created a moment ago in a cluster has no
// leader elected yet, or the cluster itself is still electing), for up to 15 s. Any
// other error, or success, returns at once.
func RetryUnready(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil || !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
