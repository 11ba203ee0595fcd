package nats

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/killswitch-dev/killswitch/telemetry/telemetrytest"
	"github.com/nats-io/nats.go/jetstream"
)

func TestAckFloor(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAckFloor(10)
	if !a.isDone(10) || a.isDone(11) {
		t.Fatal("initial floor")
	}
	// In order: the floor follows, the reply is the last one.
	a.markDone(11, "r11")
	a.markDone(12, "r12")
	if r, n := a.take(); r != "r12" || n != 2 || a.floor != 12 {
		t.Fatalf("take = %q %d, floor %d", r, n, a.floor)
	}
	if r, n := a.take(); r != "" || n != 0 {
		t.Fatalf("second take = %q %d", r, n)
	}
	// Out of order: 14 and 15 wait for 13.
	a.markDone(14, "r14")
	a.markDone(15, "r15")
	if r, _ := a.take(); r != "" || a.floor != 12 || !a.blocked() {
		t.Fatalf("floor moved past a missing sequence: %q %d", r, a.floor)
	}
	if g := a.gaps(10, t0); !slices.Equal(g, []uint64{13}) {
		t.Fatalf("gaps %v", g)
	}
	// 16 failed and awaits redelivery: not a gap until stale.
	a.markFailed(16, 1, t0)
	a.markDone(17, "r17")
	if g := a.gaps(10, t0); !slices.Equal(g, []uint64{13}) {
		t.Fatalf("gaps %v", g)
	}
	if g := a.gaps(10, t0.Add(time.Second)); !slices.Equal(g, []uint64{13, 16}) {
		t.Fatalf("stale gaps %v", g)
	}
	if a.attempts(16) != 1 {
		t.Fatalf("attempts %d", a.attempts(16))
	}
	a.markDone(13, "r13")
	if r, n := a.take(); r != "r15" || n != 3 || a.floor != 15 {
		t.Fatalf("take = %q %d, floor %d", r, n, a.floor)
	}
	// Resolved without a reply (fetched from the stream): the floor passes it, the
	// acknowledgement uses the next delivered message's reply.
	a.markDone(16, "")
	if r, n := a.take(); r != "r17" || n != 1 || a.floor != 17 || a.blocked() {
		t.Fatalf("take = %q %d, floor %d", r, n, a.floor)
	}
	// Raising the floor (server floor, stream first sequence) drops what it covers.
	a.markDone(20, "r20")
	a.markFailed(22, 2, t0)
	a.raise(21)
	if a.floor != 21 || len(a.done) != 0 || len(a.failed) != 1 || a.isDone(22) {
		t.Fatalf("after raise: floor %d done %v failed %v", a.floor, a.done, a.failed)
	}
	a.raise(5) // never lowers
	if a.floor != 21 {
		t.Fatal("raise lowered the floor")
	}
	a.markDone(22, "r22")
	if r, _ := a.take(); r != "r22" || len(a.failed) != 0 {
		t.Fatalf("take %q failed %v", r, a.failed)
	}
	a.markDone(3, "old") // below the floor: nothing
	if r, _ := a.take(); r != "" {
		t.Fatal("ack for a sequence below the floor")
	}
}

func TestParseAckReply(t *testing.T) {
	tests := []struct {
		in   string
		want ackMeta
		ok   bool
	}{
		{"$JS.ACK.EGRESS.killswitch-telemetry.3.1042.77.1738749600000000000.12", ackMeta{3, 1042, 77, 1738749600000000000}, true},
		{"$JS.ACK._.ABCDEF.EGRESS.dur.1.5.6.1738749600000000000.0.xyz", ackMeta{1, 5, 6, 1738749600000000000}, true},
		{"$JS.ACK.hub.ABCDEF.EGRESS.dur.2.9.10.1738749600000000000.4", ackMeta{2, 9, 10, 1738749600000000000}, true},
		{"$JS.ACK.EGRESS.dur.x.5.6.7.8", ackMeta{}, false},
		{"$JS.ACK.EGRESS.dur.1.5", ackMeta{}, false},
		{"_INBOX.abc", ackMeta{}, false},
		{"", ackMeta{}, false},
	}
	for _, tt := range tests {
		got, ok := parseAckReply(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseAckReply(%q) = %+v %v, want %+v %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	s := "$JS.ACK.EGRESS.killswitch-telemetry.3.1042.77.1738749600000000000.12"
	if n := testing.AllocsPerRun(100, func() { _, _ = parseAckReply(s) }); n != 0 {
		t.Fatalf("parseAckReply allocates %v", n)
	}
}

// A message deleted from the stream is never delivered: the batch acknowledgement must
// not wait for it forever.
func TestJetStreamSourceBatchAckSkipsDeletedMessages(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	o := fastOptions()
	src := newJSSource(t, nc, o)
	publishEvents(t, nc, 0, 20)
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{5, 6, 13} {
		if err := st.DeleteMsg(context.Background(), seq); err != nil {
			t.Fatal(err)
		}
	}
	c := telemetrytest.NewCollector()
	runSource(t, src, c)
	eventually(t, 5*time.Second, "17 events", func() bool { return c.Distinct() == 17 })
	eventually(t, 5*time.Second, "acknowledged past the deleted messages", func() bool {
		info := consumerInfo(t, nc, DefaultStream, DefaultDurable)
		return info.NumAckPending == 0 && info.AckFloor.Stream == 20
	})
}

// Two readers on one batch-acknowledged consumer: each acknowledges only what it can
// account for, so nothing is lost.
func TestJetStreamSourceBatchAckTwoReaders(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	o := fastOptions()
	o.BatchSize = 16
	src1 := newJSSource(t, nc, o)
	src2 := newJSSource(t, testharness.Connect(t, s), o)
	var mu sync.Mutex
	seen := map[int64]bool{}
	h := telemetry.HandlerFunc(func(_ context.Context, batch []telemetry.Event) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range batch {
			seen[e.Bytes] = true
		}
		return nil
	})
	runSource(t, src1, h)
	runSource(t, src2, h)
	const n = 2000
	publishEvents(t, nc, 0, n)
	eventually(t, 20*time.Second, "every event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	eventually(t, 10*time.Second, "all acknowledged", func() bool {
		info := consumerInfo(t, nc, DefaultStream, DefaultDurable)
		return info.NumAckPending == 0 && info.AckFloor.Stream == n
	})
	t.Logf("reader 1 %+v", src1.Counters().Snapshot())
	t.Logf("reader 2 %+v", src2.Counters().Snapshot())
}

// The consumer's ack policy is part of its identity: a batch source refuses to run on
// a per-message consumer instead of acknowledging wrongly.
func TestJetStreamSourceAckModeMismatch(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	o := fastOptions()
	o.AckMode = AckEachMessage
	newJSSource(t, nc, o)
	o.AckMode = AckBatch
	if _, err := NewJetStreamSource(context.Background(), nc, o); err == nil {
		t.Fatal("changing the ack mode of an existing consumer was accepted")
	}
}

func TestPatternCovers(t *testing.T) {
	tests := []struct {
		f, s string
		want bool
	}{
		{"egress.>", "egress.>", true},
		{"egress.>", "egress.*", true},
		{"egress.>", "egress.mailer", true},
		{"egress.>", "egress", false},
		{"egress.*", "egress.>", false},
		{"egress.*", "egress.*", true},
		{"egress.*", "egress.a.b", false},
		{"egress.mailer", "egress.*", false},
		{"egress.mailer", "egress.mailer", true},
		{">", "anything.at.all", true},
		{"other.>", "egress.>", false},
	}
	for _, tt := range tests {
		if got := patternCovers(tt.f, tt.s); got != tt.want {
			t.Errorf("patternCovers(%q, %q) = %v", tt.f, tt.s, got)
		}
	}
}

func TestJetStreamSourceBatchAckNeedsCoveringFilter(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "MIXED", Subjects: []string{"egress.>", "audit.>"}}); err != nil {
		t.Fatal(err)
	}
	o := fastOptions()
	o.Stream, o.BindOnly = "MIXED", true
	if _, err := NewJetStreamSource(context.Background(), nc, o); err == nil {
		t.Fatal("AckBatch accepted a filter that does not cover the stream")
	}
	o.AckMode = AckEachMessage
	if _, err := NewJetStreamSource(context.Background(), nc, o); err != nil {
		t.Fatalf("AckEachMessage on a bound stream: %v", err)
	}
}
