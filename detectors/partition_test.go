package detectors

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// TestReshapeMovesVendors: half way through a recording, one instance gives the vendors
// of one partition to another (SnapshotVendors, then Reshape on both sides); the two
// together make exactly the detections one engine makes alone.
func TestReshapeMovesVendors(t *testing.T) {
	evs := scenarioEvents(t, 5, 14)
	half := len(evs) / 2
	want := sortDetections(detect(mustEngine(t, snapshotConfig), evs))
	moved := func(vendor string) bool { return ShardOf(vendor, 2) == 0 }
	stays := func(vendor string) bool { return !moved(vendor) }

	rec := &recorder{}
	a := mustSharded(t, 2, rec)
	b := mustSharded(t, 3, rec)
	submitBatches(t, a, evs[:half], 700)
	var part bytes.Buffer
	if err := a.SnapshotVendors(context.Background(), &part, moved); err != nil {
		t.Fatal(err)
	}
	if err := b.Reshape(context.Background(), func(string) bool { return false }, bytes.NewReader(part.Bytes())); err != nil {
		t.Fatal(err)
	}
	if err := a.Reshape(context.Background(), stays); err != nil {
		t.Fatal(err)
	}
	var toA, toB []telemetry.Event
	for _, ev := range evs[half:] {
		if moved(ev.Vendor) {
			toB = append(toB, ev)
		} else {
			toA = append(toA, ev)
		}
	}
	if len(toA) == 0 || len(toB) == 0 {
		t.Fatalf("the split is one-sided: %d and %d events", len(toA), len(toB))
	}
	submitBatches(t, a, toA, 700)
	submitBatches(t, b, toB, 700)
	if got := rec.sorted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the move: %d detections, one engine alone: %d; they differ", len(got), len(want))
	}

	// The same vendor twice is refused and changes nothing.
	var all bytes.Buffer
	if err := b.Snapshot(context.Background(), &all); err != nil {
		t.Fatal(err)
	}
	before := b.Counters().Keys
	if err := b.Reshape(context.Background(), moved, bytes.NewReader(all.Bytes())); !errors.Is(err, ErrSnapshot) {
		t.Fatalf("adding vendors the engine keeps: %v, want ErrSnapshot", err)
	}
	if err := b.Reshape(context.Background(), stays, bytes.NewReader([]byte("garbage"))); !errors.Is(err, ErrSnapshot) {
		t.Fatalf("a corrupt snapshot: %v, want ErrSnapshot", err)
	}
	if got := b.Counters().Keys; got != before {
		t.Fatalf("a refused Reshape changed the keys: %d, want %d", got, before)
	}
}
