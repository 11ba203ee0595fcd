package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/nats-io/nats.go/jetstream"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

func entry(i int) Entry {
	return Entry{
		Type:     TypeDetection,
		ID:       fmt.Sprintf("det-%03d", i),
		Incident: "inc-1",
		Time:     t0.Add(time.Duration(i) * time.Second),
		Payload:  json.RawMessage(fmt.Sprintf(`{"n": %d, "note": "<b>&</b>"}`, i)),
	}
}

func seqOf(recs []Record) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for _, r := range recs {
			if !yield(r, nil) {
				return
			}
		}
	}
}

func TestMemoryChainVerifies(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	for i := range 10 {
		if _, err := m.Append(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The same entry again is recorded once.
	r, err := m.Append(ctx, entry(3))
	if err != nil || r.Seq != 4 {
		t.Fatalf("duplicate append = seq %d, %v; want the stored record 4", r.Seq, err)
	}
	res, err := Verify(m.All(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 10 || res.Head != m.Records()[9].Hash {
		t.Fatalf("verify = %+v", res)
	}
}

func TestVerifyFindsFirstBrokenRecord(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	for i := range 6 {
		if _, err := m.Append(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		tamper func([]Record) []Record
		want   string
	}{
		{"edited payload", func(r []Record) []Record { r[2].Payload = json.RawMessage(`{"n":99}`); return r }, "at record 3: content"},
		{"edited time", func(r []Record) []Record { r[4].Time = r[4].Time.Add(time.Second); return r }, "at record 5: content"},
		{"deleted record", func(r []Record) []Record { return append(r[:1], r[2:]...) }, "at record 3: sequence 3 does not follow 1"},
		{"reordered", func(r []Record) []Record { r[1], r[2] = r[2], r[1]; return r }, "at record 3: sequence 3 does not follow 1"},
		{"rehashed after edit", func(r []Record) []Record {
			r[1].Payload = json.RawMessage(`{"n":7}`)
			r[1].Hash = computeHash(&r[1])
			return r
		}, "at record 3: prev"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(seqOf(tt.tamper(m.Records())))
			if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Verify = %v, want ErrBroken mentioning %q", err, tt.want)
			}
		})
	}
}

func TestAppendRejectsIncompleteEntries(t *testing.T) {
	m := NewMemory()
	for _, e := range []Entry{
		{ID: "x", Time: t0, Payload: json.RawMessage(`{}`)},
		{Type: TypeDecision, Time: t0, Payload: json.RawMessage(`{}`)},
		{Type: TypeDecision, ID: "x", Payload: json.RawMessage(`{}`)},
		{Type: TypeDecision, ID: "x", Time: t0},
		{Type: TypeDecision, ID: "x", Time: t0, Payload: json.RawMessage(`{not json`)},
	} {
		if _, err := m.Append(context.Background(), e); err == nil {
			t.Errorf("Append(%+v) = nil error", e)
		}
	}
	if len(m.Records()) != 0 {
		t.Fatal("an invalid entry was recorded")
	}
}

func openStream(t *testing.T, js jetstream.JetStream) *Stream {
	t.Helper()
	s, err := OpenStream(context.Background(), js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return s
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
	res, err := Verify(s.All(ctx))
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
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("append after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	reopened := openStream(t, js)
	res, err = Verify(reopened.All(ctx))
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
	s := openStream(t, js)
	srv.Shutdown()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := s.Append(cctx, entry(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append with NATS down = %v, want ErrUnavailable", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	r := link(entry(1), 0, Genesis)
	b, _ := json.Marshal(r)
	f.Add(b)
	f.Add([]byte(`{"seq":1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRecord(data)
		if err != nil {
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("error %v does not wrap ErrBroken", err)
			}
			return
		}
		// A decoded record re-encodes to something that decodes to the same hash check.
		_ = r.Check(r.Seq-1, r.Prev)
	})
}
