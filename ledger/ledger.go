package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"sync"
)

// Memory is a ledger kept in memory: replay and tests use it. It chains and
// de-duplicates exactly like the JetStream ledger. It is safe for concurrent use.
type Memory struct {
	mu      sync.Mutex
	records []Record
	byID    map[string]int
}

// NewMemory returns an empty in-memory ledger.
func NewMemory() *Memory { return &Memory{byID: make(map[string]int)} }

// Append links e to the end of the chain. Appending an entry whose type and ID are
// already recorded returns the stored record and changes nothing.
func (m *Memory) Append(_ context.Context, e Entry) (Record, error) {
	if err := e.normalize(); err != nil {
		return Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := dedupKey(e)
	if i, ok := m.byID[k]; ok {
		return m.records[i], nil
	}
	seq, prev := uint64(0), Genesis
	if n := len(m.records); n > 0 {
		seq, prev = m.records[n-1].Seq, m.records[n-1].Hash
	}
	r := link(e, seq, prev)
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

// VerifyResult summarises a chain verification.
type VerifyResult struct {
	// Records is the number of records checked and found intact.
	Records uint64 `json:"records"`
	// Head is the hash of the last intact record (Genesis for an empty chain).
	Head string `json:"head"`
}

// Verify walks a chain and returns the first broken record as an error wrapping
// ErrBroken; errors from the source itself are returned as they are.
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

func dedupKey(e Entry) string { return string(e.Type) + ":" + e.ID }

// normalize validates e and rewrites its payload in the form the JSON encoder emits
// (compact, HTML-escaped), so the hash computed before storing is the hash of what is
// stored.
func (e *Entry) normalize() error {
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
