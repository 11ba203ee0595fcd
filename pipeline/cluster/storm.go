package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// StormBucket is the KV bucket where the instances of a cluster share escalations; its
// entries expire after the storm window.
const StormBucket = "killswitch_storm"

// Storm is the storm guard of a cluster: every instance counts the escalations of all
// of them, so ten vendors escalating at four instances are one storm, as in one
// process. An escalation that counts is written to the bucket and read back through a
// watch that feeds every instance's guard; the instance escalating evaluates only once
// its own write came back, so it has seen every escalation written before it, and the
// last escalation of a storm is always judged with all the others.
type Storm struct {
	kv    jetstream.KeyValue
	guard *incidents.StormGuard
	on    bool
	log   *zap.Logger

	mu      sync.Mutex
	applied uint64        // the last revision fed to the guard
	moved   chan struct{} // closed and replaced whenever applied moves
}

// escalation is one record of the bucket.
type escalation struct {
	Vendor string    `json:"vendor"`
	At     time.Time `json:"at"`
}

// NewStorm creates (or opens) the bucket; Run feeds the guard.
func NewStorm(ctx context.Context, js jetstream.JetStream, replicas int, s incidents.StormSettings, log *zap.Logger) (*Storm, error) {
	if log == nil {
		log = zap.NewNop()
	}
	g := incidents.NewStormGuard(s)
	window := s.Window
	if window <= 0 {
		window = 5 * time.Minute // the guard's default
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: StormBucket, Description: "Killswitch escalations, shared by the instances' storm guards",
		Storage: jetstream.FileStorage, Replicas: max(1, replicas), History: 1, TTL: window,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: bucket %s: %w", StormBucket, err)
	}
	return &Storm{kv: kv, guard: g, on: s.Vendors >= 0, log: log, moved: make(chan struct{})}, nil
}

// Run feeds every instance's escalations to the guard until ctx is done.
func (s *Storm) Run(ctx context.Context) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", StormBucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("cluster: the %s watch ended", StormBucket)
			}
			if e == nil {
				continue
			}
			var esc escalation
			if e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &esc) == nil && esc.Vendor != "" {
				s.guard.Escalated(esc.Vendor, true, esc.At) // a storm is acted on by the instance escalating
			}
			s.mu.Lock()
			s.applied = max(s.applied, e.Revision())
			close(s.moved)
			s.moved = make(chan struct{})
			s.mu.Unlock()
		}
	}
}

// Escalated implements pipeline.StormCounter. If the bucket cannot be written, the
// escalation is counted here only (logged): the guard degrades to this instance's view,
// never to no guard.
func (s *Storm) Escalated(ctx context.Context, vendor string, counts bool, now time.Time) (incidents.Storm, bool) {
	if !s.on || !counts {
		return incidents.Storm{}, false
	}
	sum := sha256.Sum256([]byte(vendor))
	b, _ := json.Marshal(escalation{Vendor: vendor, At: now})
	rev, err := s.kv.Put(ctx, "esc."+hex.EncodeToString(sum[:12]), b)
	if err != nil {
		s.log.Warn("storm guard: escalation not shared; counted by this instance only", zap.Error(err))
	} else if !s.waitApplied(ctx, rev, 2*time.Second) {
		s.log.Warn("storm guard: the other instances' escalations not read back in time; judged with what was read")
	}
	return s.guard.Escalated(vendor, true, now)
}

// waitApplied waits until the watch has fed revision rev.
func (s *Storm) waitApplied(ctx context.Context, rev uint64, limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		s.mu.Lock()
		done, moved := s.applied >= rev, s.moved
		s.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
	}
}

// Current returns the storm on at now, if any.
func (s *Storm) Current(now time.Time) (incidents.Storm, bool) { return s.guard.Current(now) }
