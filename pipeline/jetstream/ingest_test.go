package jetstream

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

const capConfig = `
vendors:
  mailer:
    caps: [{credential: mailer-api, bytes: 1000000, per: 1h}]
    credentials:
      mailer-api: {kind: token, accessor: acc-1}
`

// ingestRun is one incarnation of the ingest stage: engine, source, handler.
type ingestRun struct {
	ingest *pipeline.Ingest
	cancel context.CancelFunc
	done   chan error
}

func startIngest(t *testing.T, nc *nats.Conn, cfg *config.Config) *ingestRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureDetectionsStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	cp, err := OpenCheckpoints(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(pipeline.Config{Detectors: cfg.DetectorConfig(), Shards: 2, Sink: Sink(js, nil),
		Checkpoints: cp, CheckpointEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	src, err := telnats.NewJetStreamSource(ctx, nc, telnats.JetStreamOptions{AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stream, _ := js.Stream(ctx, "EGRESS")
	cons, err := js.Consumer(ctx, "EGRESS", "killswitch-telemetry")
	if err != nil {
		t.Fatal(err)
	}
	if err := Recover(ctx, RecoverConfig{Pipeline: p, Checkpoints: cp, Stream: stream, Consumer: cons}); err != nil {
		t.Fatal(err)
	}
	r := &ingestRun{ingest: p.Ingest(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx, p.Ingest()) }()
	return r
}

func (r *ingestRun) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
}

func publish(t *testing.T, nc *nats.Conn, from, n int, bytes int64) {
	t.Helper()
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		e := telemetry.Event{Time: t0.Add(time.Duration(i) * time.Second), Vendor: "mailer", Credential: "mailer-api", Dst: "203.0.113.7", Bytes: bytes}
		if err := pub.Publish(context.Background(), &e); err != nil {
			t.Fatal(err)
		}
	}
}

func waitAcked(t *testing.T, js jetstream.JetStream, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := js.Consumer(context.Background(), "EGRESS", "killswitch-telemetry")
		if err == nil {
			if ci, err := c.Info(context.Background()); err == nil && ci.AckFloor.Stream >= seq {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("telemetry not acknowledged up to %d", seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func detectionsIn(t *testing.T, js jetstream.JetStream) []detectors.Detection {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, DetectionsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	var out []detectors.Detection
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var d detectors.Detection
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// The cap's running sum must survive a crash: part of it is in a checkpoint, part only
// in events acknowledged after the checkpoint (caught up from the stream), and the
// event that crosses the cap arrives after the restart.
func TestIngestSurvivesCrash(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader(capConfig))
	if err != nil {
		t.Fatal(err)
	}
	srv := testharness.NATS(t)
	nc := testharness.Connect(t, srv)
	js, _ := jetstream.New(nc)

	first := startIngest(t, nc, cfg)
	publish(t, nc, 0, 3, 200_000) // 600 kB, checkpointed
	waitAcked(t, js, 3)
	if err := first.ingest.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	publish(t, nc, 3, 1, 300_000) // 900 kB, acknowledged but not checkpointed
	waitAcked(t, js, 4)
	first.stop(t) // the crash: no checkpoint on the way out

	// NATS restarts too, for good measure.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	nc2, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	second := startIngest(t, nc2, cfg)
	defer second.stop(t)
	publish(t, nc2, 4, 1, 50_000)  // 950 kB: still under
	publish(t, nc2, 5, 1, 100_000) // 1.05 MB: crosses on this event
	publish(t, nc2, 6, 1, 100_000) // same episode: no second detection
	js2, _ := jetstream.New(nc2)
	waitAcked(t, js2, 7)

	var caps []detectors.Detection
	for _, d := range detectionsIn(t, js2) {
		if d.Detector == detectors.KindCap {
			caps = append(caps, d)
		}
	}
	if len(caps) != 1 {
		t.Fatalf("%d cap detections, want exactly 1: %+v", len(caps), caps)
	}
	if want := t0.Add(5 * time.Second); !caps[0].DetectedAt.Equal(want) || caps[0].Credential != "mailer-api" {
		t.Fatalf("cap detection %+v, want it on the event at %s", caps[0], want)
	}
}
