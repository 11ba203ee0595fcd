package detectors

import (
	"bytes"
	"context"
	"io"
)

// SnapshotVendors writes, in Snapshot's format, the state of the vendors keep accepts
// and the engine-wide state (watermarks, sensors, counters). Several instances sharing
// the vendors between them checkpoint each share (a partition) on its own, so that the
// instance taking a partition over restores just that.
func (s *Sharded) SnapshotVendors(ctx context.Context, w io.Writer, keep func(vendor string) bool) error {
	return s.snapshot(ctx, w, keep)
}

// Reshape replaces the engine's set of vendors: the vendors of the current state that
// keep accepts stay as they are, the others are dropped, and the vendors of every
// snapshot in add (written by Snapshot or SnapshotVendors) are added with their state.
// A vendor both kept and added, or added twice, is an error wrapping ErrSnapshot. The
// engine-wide watermarks take the latest of all; the counters stay the engine's own.
// Like Restore, call it between submissions: events processed while it runs are lost
// from the state. On error nothing changes.
func (s *Sharded) Reshape(ctx context.Context, keep func(vendor string) bool, add ...io.Reader) error {
	var cur bytes.Buffer
	if err := s.Snapshot(ctx, &cur); err != nil {
		return err
	}
	engines, err := s.emptyEngines()
	if err != nil {
		return err
	}
	route := func(vendor string) *Engine { return engines[ShardOf(vendor, len(engines))] }
	drop := func(vendor string) *Engine {
		if keep(vendor) {
			return route(vendor)
		}
		scratch, _ := engines[0].emptyCopy() // emptyCopy cannot fail
		return scratch
	}
	if err := decodeSharded(&cur, engines, drop); err != nil {
		return err
	}
	own := make([]counters, len(engines))
	for i, e := range engines {
		own[i] = e.c
	}
	for _, r := range add {
		if err := decodeSharded(r, engines, route); err != nil {
			return err
		}
	}
	// the fleet-wide shift stays the engine's own: it is decided over the vendors it has
	s.tickMu.Lock()
	st := s.fleet.state
	s.tickMu.Unlock()
	for i, e := range engines {
		e.c = own[i]
		e.fleet = st
		e.finishRestore()
	}
	return s.swap(ctx, engines)
}
