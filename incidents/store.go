package incidents

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrNotFound is returned (wrapped) for an incident that does not exist.
var ErrNotFound = errors.New("incident not found")

// Memory keeps the latest copy of every incident saved, in memory: replay and tests use
// it (incidents/natskv keeps them in JetStream KV for the service). It is safe for
// concurrent use.
type Memory struct {
	mu   sync.Mutex
	byID map[string]*Incident
}

// NewMemory returns an empty Memory.
func NewMemory() *Memory { return &Memory{byID: make(map[string]*Incident)} }

// Save stores a copy of in.
func (m *Memory) Save(_ context.Context, in *Incident) error {
	c := in.Clone()
	m.mu.Lock()
	m.byID[in.ID] = c
	m.mu.Unlock()
	return nil
}

// Incident returns a copy of the incident id, or an error wrapping ErrNotFound.
func (m *Memory) Incident(_ context.Context, id string) (*Incident, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.byID[id]
	if !ok {
		return nil, fmt.Errorf("incident %q: %w", id, ErrNotFound)
	}
	return in.Clone(), nil
}

// Incidents returns copies of every incident, most recently detected first.
func (m *Memory) Incidents(context.Context) ([]*Incident, error) {
	m.mu.Lock()
	out := make([]*Incident, 0, len(m.byID))
	for _, in := range m.byID {
		out = append(out, in.Clone())
	}
	m.mu.Unlock()
	SortNewestFirst(out)
	return out, nil
}

// Len returns the number of incidents stored.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID)
}

// SortNewestFirst orders incidents by detection time, most recent first, then by ID.
func SortNewestFirst(ins []*Incident) {
	slices.SortFunc(ins, func(a, b *Incident) int {
		if c := b.DetectedAt.Compare(a.DetectedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}
