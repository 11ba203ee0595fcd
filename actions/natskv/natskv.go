// Package natskv keeps the guard rails' fleet-wide state — idempotency claims, held
// actions and approvals, the pause switch, the breaker, budget windows and cooldowns —
// in JetStream KV buckets, so that every instance shares it.
package natskv

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/nats-io/nats.go/jetstream"
)

var _ actions.Store = (*Store)(nil)

// Store is the guard rails' actions.Store on JetStream KV buckets (file storage, one
// value per key), shared by every instance of the fleet. It is safe for concurrent use.
type Store struct {
	kvs map[string]jetstream.KeyValue
}

// Open creates (or opens) the guard-rail buckets.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	s := &Store{kvs: map[string]jetstream.KeyValue{}}
	for _, b := range actions.Buckets {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: b, Storage: jetstream.FileStorage, Replicas: max(1, replicas), History: 1,
		})
		if err != nil {
			return nil, fmt.Errorf("actions: kv bucket %s: %w", b, err)
		}
		s.kvs[b] = kv
	}
	return s, nil
}

func (s *Store) kv(bucket string) (jetstream.KeyValue, error) {
	kv, ok := s.kvs[bucket]
	if !ok {
		return nil, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("actions: unknown bucket %s", bucket))
	}
	return kv, nil
}

// Get implements actions.Store.
func (s *Store) Get(ctx context.Context, bucket, key string) ([]byte, uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return nil, 0, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, actions.ErrNotFound
	}
	if err != nil {
		return nil, 0, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: kv get %s/%s: %w", bucket, key, err))
	}
	return e.Value(), e.Revision(), nil
}

// Create implements actions.Store.
func (s *Store) Create(ctx context.Context, bucket, key string, val []byte) (uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return 0, err
	}
	rev, err := kv.Create(ctx, key, val)
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return 0, actions.ErrExists
	case err != nil:
		return 0, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: kv create %s/%s: %w", bucket, key, err))
	}
	return rev, nil
}

// Update implements actions.Store.
func (s *Store) Update(ctx context.Context, bucket, key string, val []byte, rev uint64) (uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return 0, err
	}
	nrev, err := kv.Update(ctx, key, val, rev)
	// A stale revision also matches ErrKeyExists: test the mismatch first.
	switch {
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return 0, actions.ErrStale
	case err != nil:
		return 0, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: kv update %s/%s: %w", bucket, key, err))
	}
	return nrev, nil
}

// Keys implements actions.Store.
func (s *Store) Keys(ctx context.Context, bucket string) ([]string, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return nil, err
	}
	l, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: kv keys %s: %w", bucket, err))
	}
	defer l.Stop()
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

var _ actions.Watcher = (*Store)(nil)

// Watch implements actions.Watcher with a JetStream KV watch of the whole bucket.
func (s *Store) Watch(ctx context.Context, bucket string, update func(key string, value []byte, rev uint64), ready func()) error {
	kv, err := s.kv(bucket)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: watch %s: %w", bucket, err))
	}
	defer func() { _ = w.Stop() }() // stopping a watcher whose context ended can only fail harmlessly
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("actions: watch %s ended", bucket))
			case e == nil: // the values present have all been sent
				ready()
			case e.Operation() == jetstream.KeyValuePut:
				update(e.Key(), e.Value(), e.Revision())
			default: // deleted or purged
				update(e.Key(), nil, e.Revision())
			}
		}
	}
}
