package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/killswitch-dev/killswitch/telemetry/telemetrytest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"
)

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runSource runs src with h until the test ends and returns a function that stops it
// and returns Run's error.
func runSource(t *testing.T, src telemetry.Source, h telemetry.Handler) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx, h) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				err = errors.New("Run did not return within 10s of cancellation")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

func fastOptions() JetStreamOptions {
	return JetStreamOptions{
		AckWait: 500 * time.Millisecond, BackOff: []time.Duration{}, MaxDeliver: 4,
		NakDelay: 20 * time.Millisecond, MaxNakDelay: 100 * time.Millisecond, BatchSize: 64,
		GapTimeout: 300 * time.Millisecond,
	}
}

// forEachAckMode runs f as a subtest for each acknowledgement mode.
func forEachAckMode(t *testing.T, f func(t *testing.T, o JetStreamOptions)) {
	for _, m := range []struct {
		name string
		mode AckMode
	}{{"batch", AckBatch}, {"each", AckEachMessage}} {
		t.Run(m.name, func(t *testing.T) {
			o := fastOptions()
			o.AckMode = m.mode
			f(t, o)
		})
	}
}

func publishEvents(t *testing.T, nc *nats.Conn, from, to int) {
	t.Helper()
	p, err := NewPublisher(nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		e := telemetrytest.Event(i)
		if _, err := p.PublishAsync(&e); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitAsync(ctx); err != nil {
		t.Fatal(err)
	}
}

func consumerInfo(t *testing.T, nc *nats.Conn, stream, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// settled reports whether the consumer has nothing pending and nothing unacknowledged.
func settled(t *testing.T, nc *nats.Conn) func() bool {
	return func() bool {
		info := consumerInfo(t, nc, DefaultStream, DefaultDurable)
		return info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0
	}
}

func newJSSource(t *testing.T, nc *nats.Conn, o JetStreamOptions) *JetStreamSource {
	t.Helper()
	if o.Logger == nil {
		o.Logger = zaptest.NewLogger(t)
	}
	src, err := NewJetStreamSource(context.Background(), nc, o)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestJetStreamSourceDeliversAndAcks(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		src := newJSSource(t, nc, o)
		const n = 1000
		publishEvents(t, nc, 0, n)
		c := telemetrytest.NewCollector()
		var mu sync.Mutex
		var got []telemetry.Event
		h := telemetry.HandlerFunc(func(ctx context.Context, batch []telemetry.Event) error {
			mu.Lock()
			got = append(got, batch...)
			mu.Unlock()
			return c.Handle(ctx, batch)
		})
		stop := runSource(t, src, h)
		eventually(t, 10*time.Second, "all events", func() bool { return c.Distinct() == n })
		eventually(t, 5*time.Second, "all acknowledged", settled(t, nc))
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if c.Count(int64(i)) != 1 {
				t.Fatalf("event %d handed on %d times", i, c.Count(int64(i)))
			}
		}
		// Events arrive intact (compare one) and in publication order.
		mu.Lock()
		defer mu.Unlock()
		// Seq is the stream sequence: the stream held nothing before, so event i is i+1.
		if want := telemetrytest.Event(7); got[7].Seq != 8 || func() bool { g := got[7]; g.Seq = 0; return g != want }() {
			t.Fatalf("got %+v, want %+v", got[7], want)
		}
		for i := range got {
			if got[i].Bytes != int64(i) {
				t.Fatalf("event %d out of order: %d", i, got[i].Bytes)
			}
		}
		snap := src.Counters().Snapshot()
		if snap.Received != n || snap.Delivered != n || snap.Acked != n || snap.TotalRejected() != 0 || snap.Naked != 0 {
			t.Fatalf("counters %+v", snap)
		}
	})
}

func TestJetStreamSourceRedeliversAfterHandlerError(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		src := newJSSource(t, nc, o)
		const n = 200
		publishEvents(t, nc, 0, n)
		c := telemetrytest.NewCollector()
		c.Fail = func(call int, batch []telemetry.Event) error {
			if call <= 2 {
				return errors.New("downstream unavailable")
			}
			return nil
		}
		runSource(t, src, c)
		eventually(t, 10*time.Second, "all events after retries", func() bool { return c.Distinct() == n })
		eventually(t, 5*time.Second, "all acknowledged", settled(t, nc))
		snap := src.Counters().Snapshot()
		if snap.HandlerErrors != 2 || snap.Naked == 0 || snap.Acked != n || snap.DeadLettered != 0 {
			t.Fatalf("counters %+v", snap)
		}
	})
}

func TestJetStreamSourcePartialError(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		src := newJSSource(t, nc, o)
		const n = 50
		publishEvents(t, nc, 0, n)
		c := telemetrytest.NewCollector()
		c.Fail = func(call int, batch []telemetry.Event) error {
			if call == 1 && len(batch) > 10 {
				return &telemetry.PartialError{Handled: 10, Err: errors.New("shard 2 busy")}
			}
			return nil
		}
		runSource(t, src, c)
		eventually(t, 10*time.Second, "all events", func() bool { return c.Distinct() == n })
		eventually(t, 5*time.Second, "all acknowledged", settled(t, nc))
		for i := range n {
			if got := c.Count(int64(i)); got != 1 {
				t.Fatalf("event %d handed on %d times; the handled prefix must not be redelivered", i, got)
			}
		}
	})
}

// readDeadLetters fetches every message in the dead-letter stream.
func readDeadLetters(t *testing.T, nc *nats.Conn, want int) []jetstream.Msg {
	t.Helper()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, DefaultDeadLetterStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for len(msgs) < want {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d of %d dead letters: %v", len(msgs), want, err)
		}
		msgs = append(msgs, m)
	}
	if m, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		t.Fatalf("unexpected extra dead letter %s %q", m.Headers().Get(HeaderReason), m.Data())
	}
	return msgs
}

func TestJetStreamSourceDeadLetters(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		o.Decode = telemetry.DecodeOptions{MaxMessageSize: 1024}
		src := newJSSource(t, nc, o)
		good := func(i int) []byte { e := telemetrytest.Event(i); return telemetry.AppendJSON(nil, &e) }
		bad := []struct {
			data   string
			reason telemetry.Reason
		}{
			{`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":12`, telemetry.ReasonInvalidJSON},
			{`{"time":"2026-02-05T10:00:00Z","bytes":12}`, telemetry.ReasonMissingVendor},
			{`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":-12}`, telemetry.ReasonNegativeBytes},
			{`{"time":"yesterday","vendor":"mailer","bytes":12}`, telemetry.ReasonBadTime},
			{`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":1,"pad":"` + strings.Repeat("x", 2000) + `"}`, telemetry.ReasonOversize},
		}
		js, _ := jetstream.New(nc)
		ctx := context.Background()
		var seqs []uint64
		for i := range 20 {
			if _, err := js.Publish(ctx, "egress.mailer", good(i)); err != nil {
				t.Fatal(err)
			}
			if i%4 == 0 {
				b := bad[i/4]
				msg := &nats.Msg{Subject: "egress.mailer", Data: []byte(b.data), Header: nats.Header{"Sensor-Id": []string{"gw-9"}, jetstream.MsgIDHeader: []string{fmt.Sprint("bad-", i)}}}
				ack, err := js.PublishMsg(ctx, msg)
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, ack.Sequence)
			}
		}
		c := telemetrytest.NewCollector()
		runSource(t, src, c)
		eventually(t, 10*time.Second, "good events", func() bool { return c.Distinct() == 20 })
		letters := readDeadLetters(t, nc, len(bad))
		for i, m := range letters {
			h := m.Headers()
			if got := telemetry.Reason(h.Get(HeaderReason)); got != bad[i].reason {
				t.Errorf("dead letter %d: reason %q, want %q", i, got, bad[i].reason)
			}
			if h.Get(HeaderDetail) == "" || strings.ContainsAny(h.Get(HeaderDetail), "\r\n") {
				t.Errorf("dead letter %d: detail %q", i, h.Get(HeaderDetail))
			}
			if h.Get(HeaderSubject) != "egress.mailer" || h.Get(HeaderStream) != DefaultStream || h.Get(HeaderStreamSeq) != fmt.Sprint(seqs[i]) {
				t.Errorf("dead letter %d: headers %v, want seq %d", i, h, seqs[i])
			}
			if h.Get("Sensor-Id") != "gw-9" || h.Get(HeaderOriginalMsgID) != fmt.Sprint("bad-", i*4) || h.Get(HeaderDelivered) != "1" {
				t.Errorf("dead letter %d: original headers not kept: %v", i, h)
			}
			if string(m.Data()) != bad[i].data {
				t.Errorf("dead letter %d: body changed", i)
			}
		}
		// The originals are terminated: after several AckWaits nothing was redelivered.
		time.Sleep(3 * o.AckWait)
		eventually(t, 5*time.Second, "consumer settled", settled(t, nc))
		snap := src.Counters().Snapshot()
		wantAcked := uint64(20) // the good ones; the others are terminated
		if o.AckMode == AckBatch {
			wantAcked = 25 // the batch acknowledgement covers the dead-lettered too
		}
		if snap.Received != 25 || snap.DeadLettered != 5 || snap.Terminated != 5 || snap.Acked != wantAcked || snap.TotalRejected() != 5 || snap.Naked != 0 {
			t.Fatalf("counters %+v", snap)
		}
		for _, b := range bad {
			if snap.Rejected[b.reason] != 1 {
				t.Errorf("Rejected[%s] = %d", b.reason, snap.Rejected[b.reason])
			}
		}
	})
}

func TestJetStreamSourceHandlerFailureDeadLetters(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		o.MaxDeliver = 3
		src := newJSSource(t, nc, o)
		publishEvents(t, nc, 0, 10)
		c := telemetrytest.NewCollector()
		c.Fail = func(_ int, batch []telemetry.Event) error {
			for i, e := range batch {
				switch e.Bytes {
				case 3:
					return &telemetry.PartialError{Handled: i, Err: killswitch.Permanent(killswitch.ReasonInvalid, errors.New("event 3 cannot be processed"))}
				case 9:
					return &telemetry.PartialError{Handled: i, Err: errors.New("event 9 keeps failing")}
				}
			}
			return nil
		}
		runSource(t, src, c)
		letters := readDeadLetters(t, nc, 2)
		got := map[string]bool{}
		for _, m := range letters {
			if telemetry.Reason(m.Headers().Get(HeaderReason)) != telemetry.ReasonHandlerFailed {
				t.Fatalf("reason %q", m.Headers().Get(HeaderReason))
			}
			var e telemetry.Event
			if err := telemetry.NewJSONDecoder(telemetry.DecodeOptions{}).Decode(m.Data(), &e); err != nil {
				t.Fatal(err)
			}
			got[fmt.Sprint(e.Bytes, "/", m.Headers().Get(HeaderDelivered))] = true
		}
		// Event 3 is dead-lettered on its first delivery (permanent, and the events after
		// it are handled at once), event 9 on its third and last (retryable, MaxDeliver 3).
		if !got["3/1"] || !got["9/3"] {
			t.Fatalf("dead letters %v", got)
		}
		eventually(t, 10*time.Second, "the other events", func() bool { return c.Distinct() == 8 })
		eventually(t, 5*time.Second, "consumer settled", func() bool {
			info := consumerInfo(t, nc, DefaultStream, DefaultDurable)
			return info.NumPending == 0 && info.NumAckPending == 0
		})
		if snap := src.Counters().Snapshot(); snap.Rejected[telemetry.ReasonHandlerFailed] != 2 || snap.Terminated != 2 {
			t.Fatalf("counters %+v", snap)
		}
	})
}

func TestJetStreamSourceKilledBeforeAck(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		setup := testharness.Connect(t, s)
		newJSSource(t, setup, o) // create stream and consumer
		const n = 100
		publishEvents(t, setup, 0, n)

		// The first instance receives a batch and dies inside the handler: its connection
		// is gone before it can acknowledge anything.
		nc1, err := nats.Connect(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		src1 := newJSSource(t, nc1, o)
		inHandler := make(chan struct{})
		var once sync.Once
		h1 := telemetry.HandlerFunc(func(ctx context.Context, batch []telemetry.Event) error {
			once.Do(func() { close(inHandler) })
			nc1.Close() // the process dies here: nothing can be acknowledged any more
			return errors.New("killed")
		})
		ctx1, cancel1 := context.WithCancel(context.Background())
		defer cancel1()
		done1 := make(chan error, 1)
		go func() { done1 <- src1.Run(ctx1, h1) }()
		<-inHandler
		select {
		case err := <-done1:
			if !errors.Is(err, ErrSourceClosed) {
				t.Fatalf("Run after the connection closed: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not notice its connection closed")
		}
		if snap := src1.Counters().Snapshot(); snap.Acked != 0 {
			t.Fatalf("killed instance acked %d messages", snap.Acked)
		}

		// More telemetry arrives after the crash: a second instance receives these new
		// messages before the server redelivers the first instance's. Acknowledging them
		// must not acknowledge the others (with AckAll it would, if done naively).
		publishEvents(t, setup, n, 2*n)
		c := telemetrytest.NewCollector()
		src2 := newJSSource(t, testharness.Connect(t, s), o)
		runSource(t, src2, c)
		eventually(t, 10*time.Second, "every event, the first instance's included", func() bool { return c.Distinct() == 2*n })
		eventually(t, 5*time.Second, "all acknowledged", func() bool {
			info := consumerInfo(t, setup, DefaultStream, DefaultDurable)
			return info.NumPending == 0 && info.NumAckPending == 0
		})
		t.Logf("second instance: %+v", src2.Counters().Snapshot())
	})
}

func TestJetStreamSourceSurvivesServerRestart(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		src := newJSSource(t, nc, o)
		const first, total = 3000, 6000
		publishEvents(t, nc, 0, first)

		var mu sync.Mutex
		handled := 0
		c := telemetrytest.NewCollector()
		slow := telemetry.HandlerFunc(func(ctx context.Context, batch []telemetry.Event) error {
			time.Sleep(2 * time.Millisecond) // keep messages in flight across the restart
			mu.Lock()
			handled += len(batch)
			mu.Unlock()
			return c.Handle(ctx, batch)
		})
		stop := runSource(t, src, slow)
		eventually(t, 10*time.Second, "some events before the restart", func() bool { return c.Distinct() > 300 })
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		// Publish the rest after the restart, once the publisher's connection has
		// reconnected: a JetStream request answered proves it (IsConnected alone can
		// still report the socket to the old server before the break is noticed).
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "reconnect", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := js.Stream(ctx, DefaultStream)
			return err == nil
		})
		publishEvents(t, nc, first, total)
		eventually(t, 30*time.Second, "every event after the restart", func() bool { return c.Distinct() == total })
		eventually(t, 10*time.Second, "consumer settled", func() bool {
			info := consumerInfo(t, nc, DefaultStream, DefaultDurable)
			return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == total
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		snap := src.Counters().Snapshot()
		if snap.Acked < total || snap.TotalRejected() != 0 {
			t.Fatalf("counters %+v", snap)
		}
		t.Logf("handled %d deliveries for %d events across the restart (%d redelivered)", handled, total, handled-total)
	})
}

func TestJetStreamSourceRejectsLoopingDeadLetterSubject(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	o := fastOptions()
	o.DeadLetter.Subject = "egress.deadletter"
	if _, err := NewJetStreamSource(context.Background(), nc, o); err == nil || !strings.Contains(err.Error(), "consumed again") {
		t.Fatalf("got %v", err)
	}
	o = fastOptions()
	o.Subjects = []string{"egress.>", "bad subject"}
	if _, err := NewJetStreamSource(context.Background(), nc, o); err == nil {
		t.Fatal("invalid subject accepted")
	}
}

func TestCoreSource(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	src, err := NewCoreSource(context.Background(), nc, CoreOptions{Subject: "egress.>", BatchSize: 16, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := telemetrytest.NewCollector()
	c.Fail = func(call int, batch []telemetry.Event) error {
		for _, e := range batch {
			if e.Bytes == 5 {
				return errors.New("boom")
			}
		}
		return nil
	}
	runSource(t, src, c)
	pub, err := NewPublisher(nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The subscription is set up asynchronously by Run: wait until it is live.
	eventually(t, 5*time.Second, "subscription", func() bool {
		e := telemetrytest.Event(1000)
		_ = pub.PublishCore(&e)
		_ = nc.Flush()
		return c.Count(1000) > 0
	})
	for i := range 10 {
		e := telemetrytest.Event(i)
		if err := pub.PublishCore(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Publish("egress.mailer", []byte(`{"vendor":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	letters := readDeadLetters(t, nc, 1)
	if telemetry.Reason(letters[0].Headers().Get(HeaderReason)) != telemetry.ReasonMissingTime || letters[0].Headers().Get(HeaderSubject) != "egress.mailer" {
		t.Fatalf("dead letter headers %v", letters[0].Headers())
	}
	eventually(t, 5*time.Second, "events", func() bool {
		snap := src.Counters().Snapshot()
		return snap.Delivered+snap.Dropped >= 10
	})
	snap := src.Counters().Snapshot()
	if snap.Dropped == 0 || snap.HandlerErrors == 0 || c.Count(5) != 0 {
		t.Fatalf("a failed batch must be counted as dropped (at most once): %+v", snap)
	}
}

func TestPublisher(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	newJSSource(t, nc, fastOptions())
	p, err := NewPublisher(nc, PublisherOptions{MsgID: ContentMsgID})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"", "a.b", "a b", "*", ">"} {
		e := telemetry.Event{Vendor: v}
		if _, err := p.Subject(&e); !errors.Is(err, ErrBadSubject) {
			t.Errorf("vendor %q: %v", v, err)
		}
	}
	e := telemetrytest.Event(1)
	ctx := context.Background()
	for range 3 {
		if err := p.Publish(ctx, &e); err != nil {
			t.Fatal(err)
		}
	}
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("the same event published 3 times with ContentMsgID stored %d times", info.State.Msgs)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "egress.crm" || string(m.Data) != string(telemetry.AppendJSON(nil, &e)) || m.Header.Get(jetstream.MsgIDHeader) != ContentMsgID(&e) {
		t.Fatalf("stored %s %s %v", m.Subject, m.Data, m.Header)
	}
}
