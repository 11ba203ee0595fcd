package nats

import (
	"context"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	"github.com/killswitch-dev/killswitch/telemetry/telemetrytest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"
)

// Forged messages a single publisher can send, and the reason the door refuses each.
var forged = []struct {
	subject, data string
	reason        telemetry.Reason
}{
	{"egress.mailer", `{"time":"2099-01-01T00:00:00Z","vendor":"mailer","credential":"cred-1","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeInFuture},
	{"egress.mailer", `{"time":"1971-01-01T00:00:00Z","vendor":"mailer","credential":"cred-1","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeTooOld},
	{"egress.mailer", `{"time":"0001-01-01T00:00:00Z","vendor":"mailer","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeTooOld},
	{"egress.mailer", `{"time":"9999-12-31T23:59:59Z","vendor":"mailer","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeInFuture},
	{"egress.mailer", `{"time":"2026-02-05T10:10:00Z","vendor":"mailer","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeInFuture}, // 10 min ahead
	{"egress.mailer", `{"time":"2026-02-05T08:00:00Z","vendor":"mailer","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonTimeTooOld},   // 2 h behind
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"x9999","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonVendorMismatch},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"crm","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonVendorMismatch},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"ma*","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonInvalidName},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"mailer\u0000","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonInvalidName},
	{"egress.mailer", "{\"time\":\"2026-02-05T10:00:00Z\",\"vendor\":\"mail\xffer\",\"bytes\":1,\"sensor\":\"gw-1\"}", telemetry.ReasonInvalidName},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"mailer","credential":"a b","bytes":1,"sensor":"gw-1"}`, telemetry.ReasonInvalidName},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":1,"sensor":"gw-9"}`, telemetry.ReasonUnknownSensor},
	{"egress.mailer", `{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":1}`, telemetry.ReasonUnknownSensor},
}

func doorAdmission(t *testing.T) *telemetry.Admission {
	t.Helper()
	a, err := telemetry.NewAdmission(telemetry.Settings{Sensors: []string{"gw-1"}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The door of the JetStream source, against a real server: every forged message is
// dead-lettered with its reason header and counted, and the good events around them
// are handed on.
func TestJetStreamSourceDoor(t *testing.T) {
	forEachAckMode(t, func(t *testing.T, o JetStreamOptions) {
		s := testharness.NATS(t)
		nc := testharness.Connect(t, s)
		o.Admission = doorAdmission(t)
		o.Clock = clock.NewManual(time.Date(2026, 2, 5, 10, 0, 30, 0, time.UTC)) // the service's clock
		o.Logger = zaptest.NewLogger(t)
		src := newJSSource(t, nc, o)
		pub, err := NewPublisher(nc, PublisherOptions{})
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		ctx := context.Background()
		for i := range 30 {
			e := telemetrytest.Event(i)
			if err := pub.Publish(ctx, &e); err != nil {
				t.Fatal(err)
			}
			if i < len(forged) {
				if _, err := js.Publish(ctx, forged[i].subject, []byte(forged[i].data)); err != nil {
					t.Fatal(err)
				}
			}
		}
		c := telemetrytest.NewCollector()
		runSource(t, src, c)
		eventually(t, 10*time.Second, "good events", func() bool { return c.Distinct() == 30 })
		letters := readDeadLetters(t, nc, len(forged))
		for i, m := range letters {
			if got := telemetry.Reason(m.Headers().Get(HeaderReason)); got != forged[i].reason {
				t.Errorf("dead letter %d (%s): reason %q, want %q (%s)", i, forged[i].data, got, forged[i].reason, m.Headers().Get(HeaderDetail))
			}
			if string(m.Data()) != forged[i].data {
				t.Errorf("dead letter %d: body changed", i)
			}
		}
		eventually(t, 5*time.Second, "consumer settled", settled(t, nc))
		snap := src.Counters().Snapshot()
		if snap.Delivered != 30 || snap.DeadLettered != uint64(len(forged)) || snap.TotalRejected() != uint64(len(forged)) {
			t.Fatalf("counters %+v", snap)
		}
		want := map[telemetry.Reason]uint64{}
		for _, f := range forged {
			want[f.reason]++
		}
		for r, n := range want {
			if snap.Rejected[r] != n {
				t.Errorf("Rejected[%s] = %d, want %d", r, snap.Rejected[r], n)
			}
		}
		for i := range 30 {
			if c.Count(int64(i)) != 1 {
				t.Fatalf("event %d handed on %d times", i, c.Count(int64(i)))
			}
		}
	})
}

// A backlog that waited in the stream (Killswitch was down) is not refused for its
// wait: an event is too old only against the time its message was stored.
func TestJetStreamSourceDoorBacklog(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	o := fastOptions()
	o.Admission = doorAdmission(t)
	o.Clock = clock.NewManual(time.Now().Add(3 * time.Hour)) // read three hours later
	src := newJSSource(t, nc, o)
	pub, err := NewPublisher(nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := telemetry.Event{Time: time.Now().UTC(), Vendor: "mailer", Bytes: 7, Sensor: "gw-1"}
	if err := pub.Publish(context.Background(), &e); err != nil {
		t.Fatal(err)
	}
	c := telemetrytest.NewCollector()
	runSource(t, src, c)
	eventually(t, 10*time.Second, "the backlog", func() bool { return c.Count(7) == 1 })
}

// The core NATS source has the same door.
func TestCoreSourceDoor(t *testing.T) {
	s := testharness.NATS(t)
	nc := testharness.Connect(t, s)
	src, err := NewCoreSource(context.Background(), nc, CoreOptions{Subject: "egress.>", BatchSize: 16, Logger: zaptest.NewLogger(t),
		Admission: doorAdmission(t), Clock: clock.NewManual(time.Date(2026, 2, 5, 10, 0, 30, 0, time.UTC))})
	if err != nil {
		t.Fatal(err)
	}
	c := telemetrytest.NewCollector()
	runSource(t, src, c)
	pub, err := NewPublisher(nc, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "subscription", func() bool {
		e := telemetrytest.Event(1000)
		_ = pub.PublishCore(&e)
		_ = nc.Flush()
		return c.Count(1000) > 0
	})
	for _, f := range forged[:2] {
		if err := nc.Publish(f.subject, []byte(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.PublishMsg(&nats.Msg{Subject: forged[6].subject, Data: []byte(forged[6].data)}); err != nil {
		t.Fatal(err)
	}
	e := telemetrytest.Event(1)
	if err := pub.PublishCore(&e); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	letters := readDeadLetters(t, nc, 3)
	for i, want := range []telemetry.Reason{forged[0].reason, forged[1].reason, forged[6].reason} {
		if got := telemetry.Reason(letters[i].Headers().Get(HeaderReason)); got != want {
			t.Errorf("dead letter %d: reason %q, want %q", i, got, want)
		}
	}
	eventually(t, 5*time.Second, "the good event after them", func() bool { return c.Count(1) == 1 })
	if snap := src.Counters().Snapshot(); snap.Rejected[telemetry.ReasonVendorMismatch] != 1 || snap.Rejected[telemetry.ReasonTimeInFuture] != 1 ||
		snap.Rejected[telemetry.ReasonTimeTooOld] != 1 {
		t.Fatalf("counters %+v", snap)
	}
}

func TestSubjectVendor(t *testing.T) {
	tests := []struct {
		token   int
		filters []string
		subject string
		want    string
	}{
		{0, []string{"egress.>"}, "egress.mailer", "mailer"},
		{0, []string{"egress.>"}, "egress.mailer.extra", "mailer"},
		{0, []string{"egress.*"}, "egress.crm", "crm"},
		{0, []string{"site1.egress.*"}, "site1.egress.crm", "crm"},
		{0, []string{"a.>", "b.x.*"}, "b.x.crm", "crm"},
		{0, []string{"telemetry"}, "telemetry", ""}, // no wildcard: no vendor in the subject
		{-1, []string{"egress.>"}, "egress.mailer", ""},
		{3, []string{"egress.>"}, "egress.eu.mailer", "mailer"},
		{3, []string{"egress.>"}, "egress.mailer", "\x00"}, // too short: a mismatch, not a pass
	}
	for _, tt := range tests {
		if got := newSubjectVendor(tt.token, tt.filters).vendor(tt.subject); got != tt.want {
			t.Errorf("token %d, filters %v, subject %q: %q, want %q", tt.token, tt.filters, tt.subject, got, tt.want)
		}
	}
}
