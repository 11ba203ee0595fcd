// Package natskv stores incidents in a JetStream KV bucket: the HTTP API reads them and a
// restarted service restores the open ones.
package natskv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket holding incidents, keyed by incident ID.
const Bucket = "killswitch_incidents"

// Store keeps incidents in JetStream KV (file storage, one value per key). It is safe
// for concurrent use.
type Store struct {
	kv    jetstream.KeyValue
	clock clock.Clock
}

// UseClock makes the store tell the time with c (default the wall clock): Claim judges
// with it how long a claim may wait for its incident to be stored.
func (s *Store) UseClock(c clock.Clock) { s.clock = c }

// Open creates (or opens) the incidents bucket.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "Killswitch incidents", Storage: jetstream.FileStorage,
		Replicas: max(1, replicas), History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("incidents: kv %s: %w", Bucket, err)
	}
	return &Store{kv: kv, clock: clock.Real{}}, nil
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
		if strings.HasPrefix(k, currentPrefix) {
			continue // a key's current incident pointer (Claim)
		}
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

// currentPrefix prefixes the pointers to the keys' current incidents:
// current.<hash of vendor and credential> → incident ID.
const currentPrefix = "current."

// ErrNotStoredYet is returned by Claim when the key's current incident is claimed but
// not stored yet (its instance is storing it): retry.
var ErrNotStoredYet = errors.New("incidents: the key's current incident is not stored yet")

// ClaimGrace is how long a claim may point at an incident that is not stored: the
// instance that claimed it stores it within milliseconds, unless it died in between;
// past ClaimGrace the key is taken over, so a dead instance never blocks a key.
const ClaimGrace = 15 * time.Second

// Claim makes in its key's current incident, unless another open or contained
// incident holds the key: then it returns that one. The pointer is changed by
// compare-and-set only, so of two instances opening an incident for one key, one wins
// and the other joins it. It implements pipeline.Arbiter.
func (s *Store) Claim(ctx context.Context, in *incidents.Incident) (*incidents.Incident, error) {
	sum := sha256.Sum256([]byte(in.Vendor + "\x00" + in.Credential))
	key := currentPrefix + hex.EncodeToString(sum[:16])
	for range 8 {
		if _, err := s.kv.Create(ctx, key, []byte(in.ID)); err == nil {
			return in, nil
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("incidents: claim %s: %w", in.ID, err))
		}
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("incidents: claim %s: %w", in.ID, err))
		}
		holder := string(e.Value())
		if holder == in.ID {
			return in, nil
		}
		cur, err := s.Incident(ctx, holder)
		switch {
		case errors.Is(err, incidents.ErrNotFound):
			if s.clock.Now().Sub(e.Created()) < ClaimGrace {
				return nil, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("%w: %s holds %s/%s", ErrNotStoredYet, holder, in.Vendor, in.Credential))
			}
		case err != nil && !killswitch.IsPermanent(err):
			return nil, err
		case err == nil && cur.State != incidents.StateClosed:
			return cur, nil
		}
		// The holder is closed, unreadable, or was never stored (its instance died after
		// claiming): take the key over, if nobody did meanwhile.
		if _, err := s.kv.Update(ctx, key, []byte(in.ID), e.Revision()); err == nil {
			return in, nil
		}
	}
	return nil, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("incidents: claim %s: the key's current incident keeps changing", in.ID))
}
