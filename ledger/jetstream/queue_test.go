package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go/jetstream"
)

// named returns a distinct entry with the given ID.
func named(id string, n int) ledger.Entry {
	return ledger.Entry{
		Type:     ledger.TypeAction,
		ID:       id,
		Incident: "inc-q",
		Time:     t0.Add(time.Duration(n) * time.Millisecond),
		Payload:  json.RawMessage(fmt.Sprintf(`{"id": %q}`, id)),
	}
}

// stored verifies the whole chain of s and returns its records by sequence.
func stored(t *testing.T, s *Stream) map[uint64]ledger.Record {
	t.Helper()
	recs := make(map[uint64]ledger.Record)
	for r, err := range s.All(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		recs[r.Seq] = r
	}
	res, err := ledger.Verify(s.All(context.Background()))
	if err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
	if res.Records != uint64(len(recs)) {
		t.Fatalf("verified %d records, read %d", res.Records, len(recs))
	}
	return recs
}

// requireStored fails unless r is the record stored at its sequence.
func requireStored(t *testing.T, recs map[uint64]ledger.Record, r ledger.Record) {
	t.Helper()
	if got, ok := recs[r.Seq]; !ok || got.Hash != r.Hash {
		t.Fatalf("record %d (%s) resolved as stored but the stream holds %+v", r.Seq, r.Key(), got)
	}
}

func isDone(p *ledger.Pending) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

func TestOpenContextBoundsOpenOnly(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := OpenStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := s.Append(context.Background(), named("after-cancel", 1)); err != nil {
		t.Fatalf("append after the open's context ended: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// Entries are chained in the order Queue is called, whichever goroutine calls it.
func TestQueueOrderAcrossGoroutines(t *testing.T) {
	srv := testharness.NATS(t)
	s := openStream(t, connect(t, srv))
	const goroutines, perGoroutine = 8, 40
	var (
		mu      sync.Mutex
		order   []string
		pending = make(map[string]*ledger.Pending)
		wg      sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			var last *ledger.Pending
			for i := range perGoroutine {
				e := named(fmt.Sprintf("g%d-%03d", g, i), g*perGoroutine+i)
				mu.Lock() // records the order Queue is called in
				last = s.Queue(e)
				order = append(order, e.ID)
				pending[e.ID] = last
				mu.Unlock()
			}
			if _, err := last.Wait(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	recs := stored(t, s)
	if len(recs) != len(order) {
		t.Fatalf("%d records stored, %d queued", len(recs), len(order))
	}
	for i, id := range order {
		r, err := pending[id].Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != uint64(i+1) || r.ID != id {
			t.Fatalf("queued #%d (%s) stored as record %d (%s)", i+1, id, r.Seq, r.ID)
		}
		requireStored(t, recs, r)
	}
}

// Once the last Pending of a group resolves, every earlier one has resolved and is stored.
func TestQueueWaitLastProvesEarlier(t *testing.T) {
	srv := testharness.NATS(t)
	s := openStream(t, connect(t, srv), StreamConfig{MaxInFlight: 32})
	for _, size := range []int{1, 4, 31, 32, 33, 300} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			ps := make([]*ledger.Pending, size)
			for i := range ps {
				ps[i] = s.Queue(named(fmt.Sprintf("group%d-%03d", size, i), i))
			}
			if _, err := ps[size-1].Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			recs := stored(t, s)
			for i, p := range ps {
				if !isDone(p) {
					t.Fatalf("entry %d of %d unresolved after the last one was stored", i, size)
				}
				r, err := p.Wait(context.Background())
				if err != nil {
					t.Fatalf("entry %d: %v", i, err)
				}
				requireStored(t, recs, r)
			}
		})
	}
}

// Two writers (processes) pipelining on one stream: every Pending resolves, and the
// chain verifies — no record was stored linked to one that another writer displaced.
func TestQueueTwoWritersPipelining(t *testing.T) {
	srv := testharness.NATS(t)
	w := load{goroutines: 8, groups: 10, groupSize: 8}
	twoWriters(t, []*Stream{openStream(t, connect(t, srv)), openStream(t, connect(t, srv))}, []load{w, w})
}

// TestQueueTwoWritersOnCluster: two writers on different nodes of a 3-node cluster
// append to one R3 ledger at once. A replicated stream checks
// Nats-Expected-Last-Msg-Id only when it applies a message, and a mismatch there is a
// critical write error that stops the stream on every replica (nats-server 2.15):
// the writer must never publish a record another writer can make mismatch, and the
// ledger must still take appends afterwards.
func TestQueueTwoWritersOnCluster(t *testing.T) {
	c := testharness.NATSCluster(t, 3)
	var writers []*Stream
	for i := range 2 {
		js, err := jetstream.New(testharness.Connect(t, c.Node(i)))
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, openStream(t, js, StreamConfig{Replicas: 3}))
	}
	// One writer pipelines groups, the other appends one record at a time: its single
	// records land between the first's pipelined ones.
	twoWriters(t, writers, []load{{goroutines: 4, groups: 10, groupSize: 8}, {goroutines: 1, groups: 200, groupSize: 1}})
	for i, s := range writers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.Append(ctx, named(fmt.Sprintf("after-%d", i), 0))
		cancel()
		if err != nil {
			t.Fatalf("writer %d cannot append after the race: %v", i, err)
		}
	}
}

// TestQueueStreamMadeReplicatedWhileWriting: an instance started with replicas: 3
// raises a one-replica ledger to R3 while another instance, which opened it at R1,
// pipelines records. Within a checkpoint interval the running writer follows the
// stream to one record in flight, so the two writing at once never make the
// replicated stream mismatch a message ID (a critical write error stops it).
func TestQueueStreamMadeReplicatedWhileWriting(t *testing.T) {
	c := testharness.NATSCluster(t, 3)
	old := openStream(t, connect(t, c.Node(0)), StreamConfig{CheckpointInterval: 50 * time.Millisecond})
	if _, err := old.Append(context.Background(), named("before", 0)); err != nil {
		t.Fatal(err)
	}
	upgraded := openStream(t, connect(t, c.Node(1)), StreamConfig{Replicas: 3})
	if r := upgraded.stream.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("the stream has %d replicas after an R3 instance opened it, want 3", r)
	}
	time.Sleep(300 * time.Millisecond) // a few of the old writer's checkpoint intervals
	twoWriters(t, []*Stream{old, upgraded}, []load{{goroutines: 4, groups: 10, groupSize: 8}, {goroutines: 1, groups: 200, groupSize: 1}})
	for i, s := range []*Stream{old, upgraded} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.Append(ctx, named(fmt.Sprintf("after-%d", i), 0))
		cancel()
		if err != nil {
			t.Fatalf("writer %d cannot append after the race: %v", i, err)
		}
	}
}

// load is what one writer appends in twoWriters: from each of goroutines goroutines,
// groups groups of groupSize entries queued at once.
type load struct{ goroutines, groups, groupSize int }

// twoWriters has each writer append its load at once with the others and checks the
// chain: every entry resolved as stored is the stored record, none is stored twice,
// and not every append lost the race.
func twoWriters(t *testing.T, writers []*Stream, loads []load) {
	t.Helper()
	type result struct {
		rec ledger.Record
		err error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	want := 0
	for w, s := range writers {
		groups, groupSize := loads[w].groups, loads[w].groupSize
		want += loads[w].goroutines * groups * groupSize
		for g := range loads[w].goroutines {
			wg.Go(func() {
				for n := range groups {
					ps := make([]*ledger.Pending, groupSize)
					for i := range ps {
						ps[i] = s.Queue(named(fmt.Sprintf("w%d-g%d-%02d-%d", w, g, n, i), i))
					}
					// The last one first: when it is stored all are.
					if _, err := ps[groupSize-1].Wait(context.Background()); err == nil {
						for _, p := range ps {
							if !isDone(p) {
								t.Error("an earlier entry is unresolved after the last was stored")
							}
						}
					}
					for _, p := range ps {
						r, err := p.Wait(context.Background())
						mu.Lock()
						results = append(results, result{r, err})
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	recs := stored(t, writers[0])
	keys := make(map[string]bool)
	for _, r := range recs {
		if keys[r.Key()] {
			t.Fatalf("%s stored twice", r.Key())
		}
		keys[r.Key()] = true
	}
	failed := 0
	for _, res := range results {
		if res.err != nil {
			failed++
			if !errors.Is(res.err, ledger.ErrUnavailable) {
				t.Fatalf("append failed with %v, not wrapping ledger.ErrUnavailable", res.err)
			}
			continue
		}
		requireStored(t, recs, res.rec)
	}
	if len(results) != want {
		t.Fatalf("%d results, want %d", len(results), want)
	}
	t.Logf("%d records stored; %d appends failed (lost the race too often)", len(recs), failed)
	if failed == len(results) {
		t.Fatal("every append failed")
	}
}

// A writer whose tail is stale pipelines entries: the first is refused because another
// writer appended, and the ones published behind it must be refused too (their expected
// last message ID is the refused one), then everything is linked again.
func TestQueueStaleWriterRelinks(t *testing.T) {
	tests := []struct {
		name    string
		foreign int // records the other writer appends first
		queued  int // entries the stale writer pipelines
	}{
		{"one foreign record", 1, 3},
		{"several foreign records", 3, 5},
		{"one entry", 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testharness.NATS(t)
			other := openStream(t, connect(t, srv))
			stale := openStream(t, connect(t, srv))
			for i := range tt.foreign {
				if _, err := other.Append(context.Background(), named(fmt.Sprintf("foreign-%d", i), i)); err != nil {
					t.Fatal(err)
				}
			}
			es := make([]ledger.Entry, tt.queued)
			for i := range es {
				es[i] = named(fmt.Sprintf("stale-%d", i), i)
			}
			ps := stale.enqueue(es...) // published back to back, before any reply
			recs := make(map[uint64]ledger.Record)
			for i, p := range ps {
				r, err := p.Wait(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if want := uint64(tt.foreign + i + 1); r.Seq != want {
					t.Fatalf("entry %d stored as record %d, want %d", i, r.Seq, want)
				}
				recs[r.Seq] = r
			}
			all := stored(t, stale)
			if len(all) != tt.foreign+tt.queued {
				t.Fatalf("%d records, want %d", len(all), tt.foreign+tt.queued)
			}
			for _, r := range recs {
				requireStored(t, all, r)
			}
		})
	}
}

// Two writers appending the same key at the same moment: a stale writer links the key
// and pipelines a follower. With the same content the follower lands on the identical
// stored record; with other content the stored chain breaks at the follower (a limit
// of Nats-Expected-Last-Msg-Id, which compares keys, not hashes), and the caller is told.
func TestQueueSameKeyRace(t *testing.T) {
	tests := []struct {
		name      string
		mine      func(ledger.Entry) ledger.Entry
		wantBreak bool
	}{
		{"same content", func(e ledger.Entry) ledger.Entry { return e }, false},
		{"other content", func(e ledger.Entry) ledger.Entry { e.Time = e.Time.Add(time.Second); return e }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testharness.NATS(t)
			other := openStream(t, connect(t, srv))
			stale := openStream(t, connect(t, srv))
			k := named("k", 1)
			theirs, err := other.Append(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			ps := stale.enqueue(tt.mine(k), named("follower", 2))
			rk, errK := ps[0].Wait(context.Background())
			rf, errF := ps[1].Wait(context.Background())
			_, verr := ledger.Verify(stale.All(context.Background()))
			if !tt.wantBreak {
				if errK != nil || errF != nil || verr != nil {
					t.Fatalf("key: %v, follower: %v, verify: %v", errK, errF, verr)
				}
				if rk.Hash != theirs.Hash || rf.Seq != 2 {
					t.Fatalf("key resolved to %d %.12s (stored %.12s), follower to %d", rk.Seq, rk.Hash, theirs.Hash, rf.Seq)
				}
				return
			}
			if !errors.Is(errF, ledger.ErrBroken) || !errors.Is(verr, ledger.ErrBroken) {
				t.Fatalf("follower: %v, verify: %v; want both to report ledger.ErrBroken", errF, verr)
			}
		})
	}
}

// Duplicates inside a pipeline resolve to the stored record and the rest is relinked.
func TestQueueDuplicates(t *testing.T) {
	srv := testharness.NATS(t)
	s := openStream(t, connect(t, srv))
	earlier, err := s.Append(context.Background(), named("earlier", 0))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ids  []string
		// want[i] is the index in ids of the entry stored for ids[i], or -1 for the
		// record appended before the test.
		want []int
	}{
		{"repeat inside the pipeline", []string{"a", "b", "a", "c"}, []int{0, 1, 0, 3}},
		{"stored before", []string{"e", "earlier", "f"}, []int{0, -1, 2}},
		{"back to back", []string{"g", "g", "g", "h"}, []int{0, 0, 0, 3}},
		{"first is stored", []string{"earlier", "i", "i"}, []int{-1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(stored(t, s))
			es := make([]ledger.Entry, len(tt.ids))
			for i, id := range tt.ids {
				es[i] = named(id, 0)
			}
			ps := s.enqueue(es...)
			got := make([]ledger.Record, len(ps))
			for i, p := range ps {
				if got[i], err = p.Wait(context.Background()); err != nil {
					t.Fatalf("%s: %v", tt.ids[i], err)
				}
			}
			recs := stored(t, s)
			fresh := 0
			for i, w := range tt.want {
				requireStored(t, recs, got[i])
				switch {
				case w == -1 && got[i].Hash != earlier.Hash:
					t.Fatalf("%s resolved to record %d, want the earlier record %d", tt.ids[i], got[i].Seq, earlier.Seq)
				case w >= 0 && got[i].Hash != got[w].Hash:
					t.Fatalf("%s resolved to record %d, want %d", tt.ids[i], got[i].Seq, got[w].Seq)
				case w == i:
					fresh++
				}
			}
			if len(recs) != before+fresh {
				t.Fatalf("%d records, want %d", len(recs), before+fresh)
			}
		})
	}
}

// NATS goes down while a pipeline is in flight: every Pending resolves (stored, or an
// error wrapping ledger.ErrUnavailable), resolutions never succeed after a failure, and
// after a restart appends resume and the chain verifies.
func TestQueueNATSDownMidPipeline(t *testing.T) {
	srv := testharness.NATS(t)
	s := openStream(t, connect(t, srv), StreamConfig{Timeout: 2 * time.Second})
	var ps []*ledger.Pending
	for i := range 2000 {
		ps = append(ps, s.Queue(named(fmt.Sprintf("before-%04d", i), i)))
	}
	if _, err := ps[20].Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	for i := range 50 {
		ps = append(ps, s.Queue(named(fmt.Sprintf("down-%02d", i), i)))
	}
	var ok []ledger.Record
	failedAt := -1
	for i, p := range ps {
		r, err := p.Wait(context.Background())
		switch {
		case err == nil && failedAt >= 0:
			t.Fatalf("entry %d stored after entry %d failed", i, failedAt)
		case err == nil:
			ok = append(ok, r)
		case !errors.Is(err, ledger.ErrUnavailable):
			t.Fatalf("entry %d: %v, not wrapping ledger.ErrUnavailable", i, err)
		case failedAt < 0:
			failedAt = i
			t.Logf("first failure at entry %d: %v", i, err)
		}
	}
	if failedAt < 0 || failedAt > 2000 {
		t.Fatalf("first failure at %d: entries queued with NATS down were stored", failedAt)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := s.Append(context.Background(), named("after-restart", 0))
		if err == nil {
			break
		}
		if !errors.Is(err, ledger.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("append after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A pipeline after the restart.
	var after []*ledger.Pending
	for i := range 20 {
		after = append(after, s.Queue(named(fmt.Sprintf("after-%02d", i), i)))
	}
	if _, err := after[len(after)-1].Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := stored(t, s)
	for _, r := range ok {
		requireStored(t, recs, r)
	}
	for _, p := range after {
		r, _ := p.Wait(context.Background())
		requireStored(t, recs, r)
	}
}

// Close flushes what is queued, resolves every Pending, and refuses later entries.
func TestCloseWithEntriesPending(t *testing.T) {
	tests := []struct {
		name     string
		natsDown bool
	}{
		{"connected", false},
		{"NATS down", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testharness.NATS(t)
			js := connect(t, srv)
			s := openStream(t, js, StreamConfig{Timeout: 2 * time.Second})
			subs := js.Conn().NumSubscriptions() // with the writer's reply subscription
			var ps []*ledger.Pending
			for i := range 500 {
				ps = append(ps, s.Queue(named(fmt.Sprintf("e-%03d", i), i)))
			}
			if tt.natsDown {
				if _, err := ps[0].Wait(context.Background()); err != nil {
					t.Fatal(err)
				}
				srv.Shutdown()
			}
			closeErr := s.Close()
			if n := js.Conn().NumSubscriptions(); n != subs-1 {
				t.Fatalf("%d subscriptions after Close, %d while open: the writer's is left", n, subs)
			}
			for i, p := range ps {
				if !isDone(p) {
					t.Fatalf("entry %d unresolved after Close", i)
				}
				if _, err := p.Wait(context.Background()); err != nil && !errors.Is(err, ledger.ErrUnavailable) {
					t.Fatalf("entry %d: %v", i, err)
				}
			}
			if _, err := s.Append(context.Background(), named("late", 0)); !errors.Is(err, ErrClosed) || !errors.Is(err, ledger.ErrUnavailable) {
				t.Fatalf("append after Close = %v, want ErrClosed", err)
			}
			if again := s.Close(); !errors.Is(again, closeErr) && again != closeErr {
				t.Fatalf("second Close = %v, first %v", again, closeErr)
			}
			if !tt.natsDown {
				if closeErr != nil {
					t.Fatal(closeErr)
				}
				recs := stored(t, s)
				if len(recs) != len(ps) {
					t.Fatalf("%d records stored, %d queued", len(recs), len(ps))
				}
				return
			}
			if closeErr != nil && !errors.Is(closeErr, ledger.ErrUnavailable) {
				t.Fatalf("Close = %v", closeErr)
			}
		})
	}
}
