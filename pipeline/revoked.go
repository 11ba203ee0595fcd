package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"go.uber.org/zap"
)

// DefaultWatchRevoked is how long a revoked credential stays watched for use after
// revocation once its incident closed, unless ResponderConfig.WatchRevoked says otherwise.
const DefaultWatchRevoked = 7 * 24 * time.Hour

// revoked is what the responder's incidents revoked, as the detectors read it
// (detectors.Revocations): the key of every contained incident, from its containment
// (the verified revocation) on, while the incident is current and for WatchRevoked
// after it closed. A vendor-wide incident (no credential) watches every credential of
// its vendor. An incident restored after a false positive is not watched: its vendor's
// credentials may be in use again. It follows the incidents as they are saved (under
// their vendor's turn), restored and reloaded, and forgets the vendors whose partition
// moved away. Safe for concurrent use: the detectors' shards read it.
type revoked struct {
	ver atomic.Uint64

	mu    sync.Mutex
	watch time.Duration
	// cooldown is the incidents' cooldown: watching only while the incident is current
	// (watch 0) ends at its last detection plus the cooldown, when it closes.
	cooldown time.Duration
	vendors  map[string]*revokedVendor
}

// revokedVendor is one vendor's watched revocations.
type revokedVendor struct {
	keys map[string]revokedKey // by credential ("": the vendor as a whole)
	list []detectors.Revocation
}

type revokedKey struct {
	rev detectors.Revocation
	// until is when the watch ends: zero while the incident is current.
	until time.Time
}

func newRevoked(watch, cooldown time.Duration) *revoked {
	switch {
	case watch == 0:
		watch = DefaultWatchRevoked
	case watch < 0:
		watch = 0 // while the incident is current only
	}
	if cooldown <= 0 {
		cooldown = 30 * time.Minute // incidents.Settings' default
	}
	return &revoked{watch: watch, cooldown: cooldown, vendors: make(map[string]*revokedVendor)}
}

// Version implements detectors.Revocations.
func (w *revoked) Version() uint64 { return w.ver.Load() }

// Revoked implements detectors.Revocations. The slice is replaced, never modified.
func (w *revoked) Revoked(vendor string) []detectors.Revocation {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rv := w.vendors[vendor]; rv != nil {
		return rv.list
	}
	return nil
}

// follow updates the watch of in's key from in, as of now.
func (w *revoked) follow(in *incidents.Incident, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.followLocked(in, now) {
		w.publishLocked(in.Vendor)
	}
}

func (w *revoked) followLocked(in *incidents.Incident, now time.Time) (changed bool) {
	if in.ContainedAt == nil {
		return false // nothing revoked (a new incident on a key does not end an earlier revocation)
	}
	rv := w.vendors[in.Vendor]
	cur, has := revokedKey{}, false
	if rv != nil {
		cur, has = rv.keys[in.Credential]
	}
	mine := has && cur.rev.Incident == in.ID
	if has && !mine && cur.rev.Since.After(*in.ContainedAt) {
		return false // a later revocation of the key is watched
	}
	next := revokedKey{rev: detectors.Revocation{Credential: in.Credential, Since: *in.ContainedAt, Incident: in.ID}}
	closed := in.State == incidents.StateClosed
	switch {
	case closed && in.ClosedAt != nil:
		next.until = in.ClosedAt.Add(w.watch)
	case w.watch == 0:
		// while current only: a use_after_revocation detection past this time would
		// close the incident and open one of its own
		next.rev.Until = in.LastDetectionAt.Add(w.cooldown)
	}
	switch {
	case in.Restore != nil || in.FalsePositive || (closed && w.watch == 0) || (!next.until.IsZero() && now.After(next.until)):
		if !mine {
			return false
		}
		delete(rv.keys, in.Credential)
		return true
	case has && cur == next:
		return false
	}
	if rv == nil {
		rv = &revokedVendor{keys: make(map[string]revokedKey)}
		w.vendors[in.Vendor] = rv
	}
	rv.keys[in.Credential] = next
	return true
}

// publishLocked rebuilds vendor's list (a new slice: readers keep the old one) and
// moves the version on.
func (w *revoked) publishLocked(vendor string) {
	rv := w.vendors[vendor]
	if rv == nil {
		return
	}
	if len(rv.keys) == 0 {
		delete(w.vendors, vendor)
	} else {
		list := make([]detectors.Revocation, 0, len(rv.keys))
		for _, k := range rv.keys {
			list = append(list, k.rev)
		}
		slices.SortFunc(list, func(a, b detectors.Revocation) int { return strings.Compare(a.Credential, b.Credential) })
		rv.list = list
	}
	w.ver.Add(1)
}

// reload replaces vendor's watches with those of ins.
func (w *revoked) reload(vendor string, ins []*incidents.Incident, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	had := w.vendors[vendor] != nil
	delete(w.vendors, vendor)
	changed := had
	for _, in := range ins {
		if in.Vendor == vendor && w.followLocked(in, now) {
			changed = true
		}
	}
	if changed {
		w.publishLocked(vendor)
		if w.vendors[vendor] == nil {
			w.ver.Add(1) // emptied
		}
	}
}

// forget drops the watches of the vendors keep does not accept.
func (w *revoked) forget(keep func(vendor string) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.vendors)
	for name := range w.vendors {
		if !keep(name) {
			delete(w.vendors, name)
		}
	}
	if len(w.vendors) != n {
		w.ver.Add(1)
	}
}

// expire ends the watches past their end as of now.
func (w *revoked) expire(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, rv := range w.vendors {
		changed := false
		for cred, k := range rv.keys {
			if !k.until.IsZero() && now.After(k.until) {
				delete(rv.keys, cred)
				changed = true
			}
		}
		if changed {
			w.publishLocked(name)
		}
	}
}

// Revocations returns what the responder's incidents revoked, for the detectors'
// use_after_revocation detector (pipeline.New wires it).
func (r *Responder) Revocations() detectors.Revocations { return r.revoked }

// afterRevocation is the responder's own part in a use_after_revocation detection d of
// incident inc: it is counted, and a human is paged whenever the playbooks are asked
// (every such detection of a contained incident — at most one per credential per
// detector interval — and the first of any other incident), independently of what the
// playbooks decide: a library that does not notify on it still reaches a human.
func (r *Responder) afterRevocation(ctx context.Context, d detectors.Detection, inc *incidents.Incident, esc incidents.Escalation) {
	if d.Detector != detectors.KindUseAfterRevocation {
		return
	}
	if m := r.cfg.Metrics; m != nil {
		m.UseAfterRevocation.Inc()
		if d.Revoked != nil {
			m.UseAfterRevocationBytes.Add(float64(d.Revoked.NewBytes))
		}
	}
	r.cfg.Log.Error("use after revocation: a revoked credential moves data",
		zap.String("incident", inc.ID), zap.String("detection", d.ID), zap.String("key", d.Key.String()), zap.String("reason", d.Reason))
	if r.cfg.Pager == nil || esc == incidents.EscalationNone {
		return
	}
	page := map[string]any{"page": true, "incident": inc.ID, "detection": d, "kind": d.Detector,
		"reason": fmt.Sprintf("use after revocation on %s: %s", d.Key, d.Reason)}
	if err := r.cfg.Pager.Page(ctx, d.Vendor, page); err != nil {
		r.cfg.Log.Error("could not page", zap.String("incident", inc.ID), zap.String("detection", d.ID), zap.Error(err))
	}
}
