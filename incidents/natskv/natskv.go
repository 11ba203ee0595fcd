// Package natskv stores incidents in a JetStream KV bucket: the HTTP API reads them and a
// restarted service restores the open ones.
package natskv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket holding incidents, keyed by incident ID.
const Bucket = "killswitch_incidents"

// Store keeps incidents in JetStream KV (file storage, one value per key). It is safe
// for concurrent use.
type Store struct {
	kv jetstream.KeyValue
}

// Open creates (or opens) the incidents bucket.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "Killswitch incidents", Storage: jetstream.FileStorage,
		Replicas: max(1, replicas), History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("incidents: kv %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

// Save stores the incident's latest state.
func (s *Store) Save(ctx context.Context, in *incidents.Incident) error {
	b, err := json.Marshal(in)
	if err != nil {
		return killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("incidents: encode incident: %w", err))
	}
	if _, err := s.kv.Put(ctx, in.ID, b); err != nil {
		return killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("incidents: save incident %s: %w", in.ID, err))
	}
	return nil
}

// Incident returns one incident, or an error wrapping incidents.ErrNotFound.
func (s *Store) Incident(ctx context.Context, id string) (*incidents.Incident, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("incident %q: %w", id, incidents.ErrNotFound)
	}
	if err != nil {
		return nil, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("incidents: read incident %s: %w", id, err))
	}
	var in incidents.Incident
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		return nil, killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("incidents: decode incident %s: %w", id, err))
	}
	return &in, nil
}

// Incidents returns every incident, most recently detected first.
func (s *Store) Incidents(ctx context.Context) ([]*incidents.Incident, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("incidents: list incidents: %w", err))
	}
	defer lister.Stop()
	out := []*incidents.Incident{}
	for k := range lister.Keys() {
		in, err := s.Incident(ctx, k)
		if errors.Is(err, incidents.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	incidents.SortNewestFirst(out)
	return out, nil
}
