package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"sync"
)

// Appender appends entries to a ledger: Memory here, the JetStream stream in
// ledger/jetstream. An entry whose type and ID are already recorded is recorded once; an
// error means the entry may not be recorded (wrapping ErrUnavailable, or ErrBroken when
// the stored chain is damaged), and then nothing that depends on it may be applied.
type Appender interface {
	Append(ctx context.Context, e Entry) (Record, error)
}

// Queuer appends entries without waiting for each one: a caller that must record
// several facts before acting (a detection, the incident, the decision, then the
// action's intent) queues them all and waits for the last, paying about one storage
// round instead of one per record.
//
// Queue validates and normalizes e (see Entry.Normalize) and, if it is valid, places it
// in the chain at once: entries are chained in the order Queue is called, also across
// goroutines. It returns without waiting; the returned Pending resolves to the stored
// record or to an error, with the same meaning as Appender.Append's result (an entry
// whose type and ID are already recorded resolves to the stored record). An invalid
// entry takes no place in the chain: its Pending has already failed when Queue returns.
//
// A queued record is stored only if every record queued before it is stored: once the
// Pending of the last of several entries resolves without error, all the earlier ones
// are durable too (their Pendings have resolved, or resolve at once, to their records).
// When a record fails, every record queued after it that is not stored yet fails as
// well; entries queued after the failure is seen start a fresh run.
type Queuer interface {
	Queue(e Entry) *Pending
}

var (
	_ Appender = (*Memory)(nil)
	_ Queuer   = (*Memory)(nil)
)

// Pending is the outcome of a queued entry: the stored record, or the error that kept it
// from being stored. It is safe for concurrent use; any number of goroutines may wait.
// Pendings come from Queue, NewPending or Resolved; the zero Pending never resolves.
type Pending struct {
	done chan struct{}
	once sync.Once
	rec  Record
	err  error
}

// NewPending returns an unresolved Pending and the function that resolves it, for
// implementations of Queuer. Only the first call of resolve counts; it never blocks.
func NewPending() (p *Pending, resolve func(Record, error)) {
	p = &Pending{done: make(chan struct{})}
	return p, p.resolve
}

// Resolved returns a Pending that has already resolved to r and err.
func Resolved(r Record, err error) *Pending {
	p, resolve := NewPending()
	resolve(r, err)
	return p
}

func (p *Pending) resolve(r Record, err error) {
	p.once.Do(func() {
		p.rec, p.err = r, err
		close(p.done)
	})
}

// Done returns a channel that is closed once the Pending has resolved, for select.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait waits until the entry is stored, and returns its record, or the error that kept
// it from being stored. If ctx ends first, Wait returns an error wrapping ErrUnavailable
// and ctx's error; the entry stays queued and may still be stored, so the caller must
// treat it as not recorded (and apply nothing that depends on it).
func (p *Pending) Wait(ctx context.Context) (Record, error) {
	select {
	case <-p.done:
		return p.rec, p.err
	default:
	}
	select {
	case <-p.done:
		return p.rec, p.err
	case <-ctx.Done():
		return Record{}, fmt.Errorf("%w: waiting for the record to be stored: %w", ErrUnavailable, ctx.Err())
	}
}

// Later places e in a's chain now, without waiting, when a can queue (see Queuer), and
// appends it at once otherwise. The returned function waits until e is stored (with
// ctx) and returns the error that kept it from being stored, if any. Records placed one
// after the other with Later keep their order.
func Later(ctx context.Context, a Appender, e Entry) (wait func() error) {
	if q, ok := a.(Queuer); ok {
		p := q.Queue(e)
		return func() error {
			_, err := p.Wait(ctx)
			return err
		}
	}
	_, err := a.Append(ctx, e)
	return func() error { return err }
}

// Memory is a ledger kept in memory: replay and tests use it. It chains and
// de-duplicates exactly like the JetStream ledger, and MACs its records when it has a
// key. It is safe for concurrent use.
type Memory struct {
	key     *Key
	mu      sync.Mutex
	records []Record
	byID    map[string]int
}

// NewMemory returns an empty in-memory ledger whose records carry no MAC (replay: its
// records never leave the process).
func NewMemory() *Memory { return NewMemoryWithKey(nil) }

// NewMemoryWithKey returns an empty in-memory ledger that MACs its records with k.
func NewMemoryWithKey(k *Key) *Memory { return &Memory{key: k, byID: make(map[string]int)} }

// Queue appends e at once (Memory stores synchronously) and returns its resolved
// Pending; see Queuer.
func (m *Memory) Queue(e Entry) *Pending {
	return Resolved(m.Append(context.Background(), e))
}

// Append links e to the end of the chain. Appending an entry whose type and ID are
// already recorded returns the stored record and changes nothing.
func (m *Memory) Append(_ context.Context, e Entry) (Record, error) {
	if err := e.Normalize(); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := e.Key()
	if i, ok := m.byID[k]; ok {
		return m.records[i], nil
	}
	seq, prev := uint64(0), Genesis
	if n := len(m.records); n > 0 {
		seq, prev = m.records[n-1].Seq, m.records[n-1].Hash
	}
	r := LinkSigned(e, seq, prev, m.key)
	m.byID[k] = len(m.records)
	m.records = append(m.records, r)
	return r, nil
}

// Records returns a copy of the chain.
func (m *Memory) Records() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Record(nil), m.records...)
}

// All iterates over the chain in order.
func (m *Memory) All(context.Context) iter.Seq2[Record, error] {
	recs := m.Records()
	return func(yield func(Record, error) bool) {
		for _, r := range recs {
			if !yield(r, nil) {
				return
			}
		}
	}
}

// Messages iterates over the chain in its stored form, each record at the position of
// its sequence, for Audit.
func (m *Memory) Messages(context.Context) iter.Seq2[Message, error] {
	recs := m.Records()
	return func(yield func(Message, error) bool) {
		for _, r := range recs {
			b, err := json.Marshal(r)
			if !yield(Message{Stream: r.Seq, Data: b}, err) || err != nil {
				return
			}
		}
	}
}

// VerifyResult summarises a chain verification.
type VerifyResult struct {
	// Records is the number of records checked and found intact.
	Records uint64 `json:"records"`
	// Head is the hash of the last intact record (Genesis for an empty chain).
	Head string `json:"head"`
}

// Verify walks a chain and returns the first broken record as an error wrapping
// ErrBroken; errors from the source itself are returned as they are. It checks links
// and hashes only, not MACs, and stops at the first break: Audit checks MACs and
// checkpoints and lists every break.
func Verify(records iter.Seq2[Record, error]) (VerifyResult, error) {
	res := VerifyResult{Head: Genesis}
	for r, err := range records {
		if err != nil {
			return res, err
		}
		if err := r.Check(res.Records, res.Head); err != nil {
			return res, err
		}
		res.Records, res.Head = r.Seq, r.Hash
	}
	return res, nil
}

// Key returns the entry's identity in the ledger, "type:id": appending two entries with
// the same key records the first only.
func (e Entry) Key() string { return string(e.Type) + ":" + e.ID }

// Normalize validates e and rewrites its payload in the form the JSON encoder emits
// (compact, HTML-escaped), so the hash computed before storing is the hash of what is
// stored. Every Appender calls it before linking.
func (e *Entry) Normalize() error {
	switch {
	case e.Type == "":
		return fmt.Errorf("ledger: entry without type")
	case e.ID == "":
		return fmt.Errorf("ledger: %s entry without id", e.Type)
	case e.Time.IsZero():
		return fmt.Errorf("ledger: %s entry %s without time", e.Type, e.ID)
	case len(e.Payload) == 0:
		return fmt.Errorf("ledger: %s entry %s without payload", e.Type, e.ID)
	}
	p, err := json.Marshal(e.Payload)
	if err != nil {
		return fmt.Errorf("ledger: %s entry %s: payload is not JSON: %w", e.Type, e.ID, err)
	}
	e.Payload = p
	return nil
}
