package actions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// The buckets the guard rails keep their fleet-wide state in.
const (
	// ClaimsBucket holds one idempotency claim per (incident, action, target).
	ClaimsBucket = "killswitch_claims"
	// ApprovalsBucket holds held actions and their approvals.
	ApprovalsBucket = "killswitch_approvals"
	// ControlBucket holds the pause switch, the budget counters, the breaker and cooldowns.
	ControlBucket = "killswitch_control"
)

// Store errors, with JetStream KV's semantics.
var (
	// ErrNotFound: no such key.
	ErrNotFound = errors.New("key not found")
	// ErrExists: Create found the key already there.
	ErrExists = errors.New("key exists")
	// ErrStale: Update's expected revision is not the key's current revision.
	ErrStale = errors.New("revision mismatch")
)

// Store is the small key-value interface the guard rails need: a distributed latch
// (Create) and compare-and-set (Update). JetStream KV in the service, memory in replay.
type Store interface {
	// Get returns the value and revision of key in bucket.
	Get(ctx context.Context, bucket, key string) ([]byte, uint64, error)
	// Create stores key only if it does not exist (ErrExists otherwise).
	Create(ctx context.Context, bucket, key string, val []byte) (uint64, error)
	// Update stores key only if its revision is rev (ErrStale otherwise).
	Update(ctx context.Context, bucket, key string, val []byte, rev uint64) (uint64, error)
	// Keys lists the keys of bucket.
	Keys(ctx context.Context, bucket string) ([]string, error)
}

// KVStore is the Store on JetStream KV buckets (file storage, one value per key).
type KVStore struct {
	kvs map[string]jetstream.KeyValue
}

// NewKVStore creates (or opens) the guard-rail buckets.
func NewKVStore(ctx context.Context, js jetstream.JetStream, replicas int) (*KVStore, error) {
	s := &KVStore{kvs: map[string]jetstream.KeyValue{}}
	for _, b := range []string{ClaimsBucket, ApprovalsBucket, ControlBucket} {
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

func (s *KVStore) kv(bucket string) (jetstream.KeyValue, error) {
	kv, ok := s.kvs[bucket]
	if !ok {
		return nil, fmt.Errorf("actions: unknown bucket %s", bucket)
	}
	return kv, nil
}

// Get implements Store.
func (s *KVStore) Get(ctx context.Context, bucket, key string) ([]byte, uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return nil, 0, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, Retryable(fmt.Errorf("actions: kv get %s/%s: %w", bucket, key, err))
	}
	return e.Value(), e.Revision(), nil
}

// Create implements Store.
func (s *KVStore) Create(ctx context.Context, bucket, key string, val []byte) (uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return 0, err
	}
	rev, err := kv.Create(ctx, key, val)
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return 0, ErrExists
	case err != nil:
		return 0, Retryable(fmt.Errorf("actions: kv create %s/%s: %w", bucket, key, err))
	}
	return rev, nil
}

// Update implements Store.
func (s *KVStore) Update(ctx context.Context, bucket, key string, val []byte, rev uint64) (uint64, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return 0, err
	}
	nrev, err := kv.Update(ctx, key, val, rev)
	// A stale revision also matches ErrKeyExists: test the mismatch first.
	switch {
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return 0, ErrStale
	case err != nil:
		return 0, Retryable(fmt.Errorf("actions: kv update %s/%s: %w", bucket, key, err))
	}
	return nrev, nil
}

// Keys implements Store.
func (s *KVStore) Keys(ctx context.Context, bucket string) ([]string, error) {
	kv, err := s.kv(bucket)
	if err != nil {
		return nil, err
	}
	l, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, Retryable(fmt.Errorf("actions: kv keys %s: %w", bucket, err))
	}
	defer l.Stop()
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// MemoryStore is the Store in memory, for replay and tests. It is safe for concurrent use.
type MemoryStore struct {
	mu   sync.Mutex
	rev  uint64
	data map[string]memEntry
}

type memEntry struct {
	val []byte
	rev uint64
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{data: map[string]memEntry{}} }

// Get implements Store.
func (m *MemoryStore) Get(_ context.Context, bucket, key string) ([]byte, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.data[bucket+"\x00"+key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return slices.Clone(e.val), e.rev, nil
}

// Create implements Store.
func (m *MemoryStore) Create(_ context.Context, bucket, key string, val []byte) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := bucket + "\x00" + key
	if _, ok := m.data[k]; ok {
		return 0, ErrExists
	}
	m.rev++
	m.data[k] = memEntry{val: slices.Clone(val), rev: m.rev}
	return m.rev, nil
}

// Update implements Store.
func (m *MemoryStore) Update(_ context.Context, bucket, key string, val []byte, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := bucket + "\x00" + key
	if e, ok := m.data[k]; !ok || e.rev != rev {
		return 0, ErrStale
	}
	m.rev++
	m.data[k] = memEntry{val: slices.Clone(val), rev: m.rev}
	return m.rev, nil
}

// Keys implements Store.
func (m *MemoryStore) Keys(_ context.Context, bucket string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keys []string
	for k := range m.data {
		if b, key, ok := strings.Cut(k, "\x00"); ok && b == bucket {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys, nil
}
