package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"testing"
	"time"
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

func FuzzDecodeRecord(f *testing.F) {
	r := Link(entry(1), 0, Genesis)
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

func TestMemoryQueue(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	invalid := entry(9)
	invalid.Payload = nil
	tests := []struct {
		name    string
		e       Entry
		wantSeq uint64
		wantErr bool
	}{
		{"first", entry(0), 1, false},
		{"second", entry(1), 2, false},
		{"invalid takes no place", invalid, 0, true},
		{"duplicate returns the stored record", entry(0), 1, false},
		{"third", entry(2), 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := m.Queue(tt.e)
			select {
			case <-p.Done():
			default:
				t.Fatal("Memory.Queue returned an unresolved Pending")
			}
			r, err := p.Wait(ctx)
			if (err != nil) != tt.wantErr || r.Seq != tt.wantSeq {
				t.Fatalf("Wait = seq %d, %v; want seq %d, error %v", r.Seq, err, tt.wantSeq, tt.wantErr)
			}
		})
	}
	if res, err := Verify(m.All(ctx)); err != nil || res.Records != 3 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

func TestPendingWait(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	rec := Link(entry(1), 0, Genesis)
	errStore := errors.New("store failed")
	tests := []struct {
		name    string
		pending func() *Pending
		ctx     context.Context
		want    Record
		wantErr []error
	}{
		{"resolved", func() *Pending { return Resolved(rec, nil) }, context.Background(), rec, nil},
		{"failed", func() *Pending { return Resolved(Record{}, errStore) }, context.Background(), Record{}, []error{errStore}},
		{"resolved beats a done context", func() *Pending { return Resolved(rec, nil) }, cancelled, rec, nil},
		{"first resolution counts", func() *Pending {
			p, resolve := NewPending()
			resolve(rec, nil)
			resolve(Record{}, errStore)
			return p
		}, context.Background(), rec, nil},
		{"unresolved and the context ends", func() *Pending { p, _ := NewPending(); return p }, cancelled,
			Record{}, []error{ErrUnavailable, context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.pending().Wait(tt.ctx)
			if r.Hash != tt.want.Hash || r.Seq != tt.want.Seq {
				t.Fatalf("Wait = record %d %.12s, want %d %.12s", r.Seq, r.Hash, tt.want.Seq, tt.want.Hash)
			}
			if (err != nil) != (len(tt.wantErr) > 0) {
				t.Fatalf("Wait error = %v, want %v", err, tt.wantErr)
			}
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Fatalf("Wait error = %v, does not wrap %v", err, want)
				}
			}
		})
	}
}

func TestPendingResolvesWaiters(t *testing.T) {
	p, resolve := NewPending()
	rec := Link(entry(1), 0, Genesis)
	results := make(chan Record, 3)
	for range 3 {
		go func() {
			r, _ := p.Wait(context.Background())
			results <- r
		}()
	}
	resolve(rec, nil)
	for range 3 {
		if r := <-results; r.Hash != rec.Hash {
			t.Fatalf("waiter got %+v", r)
		}
	}
}

// appendOnly is an Appender that cannot queue.
type appendOnly struct{ m *Memory }

func (a appendOnly) Append(ctx context.Context, e Entry) (Record, error) { return a.m.Append(ctx, e) }

// Later queues where it can and appends where it cannot; either way the order is kept
// and the wait reports the outcome.
func TestLater(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		a    func(*Memory) Appender
	}{
		{"queuer", func(m *Memory) Appender { return m }},
		{"appender", func(m *Memory) Appender { return appendOnly{m} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemory()
			a := tc.a(m)
			first, second := Later(ctx, a, entry(1)), Later(ctx, a, entry(2))
			if err := errors.Join(second(), first()); err != nil {
				t.Fatal(err)
			}
			if recs := m.Records(); len(recs) != 2 || recs[0].ID != "det-001" || recs[1].ID != "det-002" {
				t.Fatalf("records %+v", recs)
			}
			if err := Later(ctx, a, Entry{ID: "no-type"})(); err == nil {
				t.Fatal("an invalid entry was stored")
			}
		})
	}
}
