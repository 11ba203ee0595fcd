package actions

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
)

// Buckets lists the buckets the guard rails keep their fleet-wide state in.
var Buckets = [...]string{ClaimsBucket, ApprovalsBucket, ControlBucket, KillsBucket}

// The buckets the guard rails keep their fleet-wide state in.
const (
	// ClaimsBucket holds one idempotency claim per (incident, action, target).
	ClaimsBucket = "killswitch_claims"
	// ApprovalsBucket holds held actions and their approvals.
	ApprovalsBucket = "killswitch_approvals"
	// ControlBucket holds the pause switch, the budget windows, the breaker and cooldowns.
	ControlBucket = "killswitch_control"
	// KillsBucket holds the kill orders (kill-vendor) and the false-positive holds of
	// restored incidents (see pipeline.Killer).
	KillsBucket = "killswitch_kills"
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
// (Create) and compare-and-set (Update). JetStream KV in the service (actions/natskv),
// memory in replay and tests (MemoryStore). Errors other than ErrNotFound, ErrExists
// and ErrStale follow the killswitch error model (retryable unless marked permanent).
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

// A Watcher tells of every change in a bucket, as JetStream KV's watch does: the values
// present first, then ready, then each change as it happens. Control keeps a mirror of
// the control bucket with it and serves the pause switch, the breaker, the cooldowns and
// the budget windows from memory instead of reading them for every action; writes
// still go to the Store with compare-and-set, so a stale mirror costs a retry, never a
// wrong count.
type Watcher interface {
	// Watch calls update for every value of bucket and every later change (deleted
	// keys with a nil value), and ready once the values present have been sent, until
	// ctx is done (it then returns nil) or the watch fails.
	Watch(ctx context.Context, bucket string, update func(key string, value []byte, rev uint64), ready func()) error
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
