package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

func entry(i int) ledger.Entry {
	return ledger.Entry{
		Type:     ledger.TypeDetection,
		ID:       fmt.Sprintf("det-%03d", i),
		Incident: "inc-1",
		Time:     t0.Add(time.Duration(i) * time.Second),
		Payload:  json.RawMessage(fmt.Sprintf(`{"n": %d}`, i)),
	}
}

// openStream opens the ledger on js, as one writer (process), closed when the test ends.
func openStream(tb testing.TB, js jetstream.JetStream, cfg ...StreamConfig) *Stream {
	tb.Helper()
	var c StreamConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	s, err := OpenStream(context.Background(), js, c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// connect opens a connection of its own to srv, as another process would.
func connect(tb testing.TB, srv *embeddednats.Server) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(testharness.Connect(tb, srv))
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

func TestStreamLedger(t *testing.T) {
	ctx := context.Background()
	srv := testharness.NATS(t)
	js, err := jetstream.New(testharness.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	s := openStream(t, js)
	for i := range 5 {
		if _, err := s.Append(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A second writer (another process) opened on the same stream continues the chain,
	// and the first writer, now behind, relinks after the other's records.
	s2 := openStream(t, js)
	var wg sync.WaitGroup
	for w, l := range []*Stream{s, s2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if _, err := l.Append(ctx, entry(100*(w+1)+i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	// A duplicate is stored once and the stored record comes back.
	dup, err := s2.Append(ctx, entry(2))
	if err != nil || dup.Seq != 3 || dup.ID != "det-002" {
		t.Fatalf("duplicate append = %+v, %v", dup, err)
	}
	res, err := ledger.Verify(s.All(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 45 {
		t.Fatalf("verified %d records, want 45", res.Records)
	}

	// A NATS restart: the writer reconnects and the chain continues.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Append(ctx, entry(999))
		if err == nil {
			break
		}
		if !errors.Is(err, ledger.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("append after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	reopened := openStream(t, js)
	res, err = ledger.Verify(reopened.All(ctx))
	if err != nil || res.Records != 46 {
		t.Fatalf("after restart: %+v, %v", res, err)
	}
	// The stream refuses deletion: the ledger is append-only.
	if err := reopened.stream.DeleteMsg(ctx, 3); err == nil {
		t.Fatal("deleting a ledger record succeeded")
	}
}

func TestStreamUnavailable(t *testing.T) {
	ctx := context.Background()
	srv := testharness.NATS(t)
	js, err := jetstream.New(testharness.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	s := openStream(t, js, StreamConfig{Timeout: time.Second})
	srv.Shutdown()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := s.Append(cctx, entry(1)); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("append with NATS down = %v, want ledger.ErrUnavailable", err)
	}
}

func TestTransientErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{nats.ErrNoResponders, true},
		{fmt.Errorf("fetch: %w", jetstream.ErrConsumerLeadershipChanged), true},
		{jetstream.ErrNoHeartbeat, true},
		{context.DeadlineExceeded, true},
		{jetstream.ErrStreamNotFound, false},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10071, Description: "wrong last sequence"}, false},
		{errors.New("nats: permissions violation"), false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A reader retries while the stream is unreachable, and gives up with
// ledger.ErrUnavailable when its context ends.
func TestReadMessagesWhileUnreachable(t *testing.T) {
	srv := testharness.NATS(t)
	js, err := jetstream.New(testharness.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	s := openStream(t, js, StreamConfig{Timeout: time.Second})
	if _, err := s.Append(context.Background(), entry(1)); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	for _, err := range ReadMessages(ctx, s.stream, 1, 0) {
		if !errors.Is(err, ledger.ErrUnavailable) {
			t.Fatalf("read with NATS down = %v, want ledger.ErrUnavailable", err)
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("read with NATS down took %s: retries must end with the context", took)
	}
}

// A stream already as wanted is left alone on open; one whose configuration differs is
// updated.
func TestEnsureUpdatesOnlyWhatDiffers(t *testing.T) {
	ctx := context.Background()
	js, err := jetstream.New(testharness.Connect(t, testharness.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	want := jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}, Storage: jetstream.FileStorage, Duplicates: time.Minute,
		DenyDelete: true, DenyPurge: true}
	st, err := ensure(ctx, js, want)
	if err != nil {
		t.Fatal(err)
	}
	created := st.CachedInfo().Created
	if !sameConfig(st.CachedInfo().Config, want) {
		t.Fatalf("created %+v, want %+v", st.CachedInfo().Config, want)
	}
	if st, err = ensure(ctx, js, want); err != nil || !st.CachedInfo().Created.Equal(created) {
		t.Fatalf("reopened: %v", err)
	}
	want.Duplicates = 2 * time.Minute
	if st, err = ensure(ctx, js, want); err != nil || st.CachedInfo().Config.Duplicates != 2*time.Minute {
		t.Fatalf("updated: %v, duplicates %s", err, st.CachedInfo().Config.Duplicates)
	}
}

// An entry the stream refuses starts a failure streak that Integrity reports (when it
// began, how many entries failed, the latest error) until an entry is stored again.
func TestAppendFailuresAreReported(t *testing.T) {
	ctx := context.Background()
	js := connect(t, testharness.NATS(t))
	clk := clock.NewManual(t0)
	s := openStream(t, js, StreamConfig{Timeout: time.Second, Clock: clk})
	appendN(t, s, "ok", 2)
	if st := s.Integrity(); st.Failing() || st.Failed != 0 || st.LastFailure != "" {
		t.Fatalf("after stored appends: %+v, want no failure", st)
	}

	// The stream refuses every record (none fits its largest message size).
	limit := func(size int32) {
		t.Helper()
		cfg := s.stream.CachedInfo().Config
		cfg.MaxMsgSize = size
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	limit(1)
	if _, err := s.Append(ctx, entry(10)); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("append of a refused record = %v, want ledger.ErrUnavailable", err)
	}
	st := s.Integrity()
	if !st.Failing() || !st.FailingSince.Equal(t0) || st.Failed != 1 || !strings.Contains(st.LastFailure, "message size exceeds maximum") {
		t.Fatalf("after a refused append: %+v, want failing since %s, 1 failed, the server's reason", st, t0)
	}
	clk.Advance(time.Minute)
	if _, err := s.Append(ctx, entry(11)); err == nil {
		t.Fatal("second append of a refused record succeeded")
	}
	if st := s.Integrity(); !st.FailingSince.Equal(t0) || st.Failed != 2 {
		t.Fatalf("after two refused appends: %+v, want failing since %s (the first), 2 failed", st, t0)
	}

	limit(-1)
	if _, err := s.Append(ctx, entry(12)); err != nil {
		t.Fatal(err)
	}
	if st := s.Integrity(); st.Failing() || st.Failed != 0 || st.LastFailure != "" {
		t.Fatalf("after a stored append: %+v, want the failure streak over", st)
	}
}
