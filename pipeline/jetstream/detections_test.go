package jetstream

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/nats-io/nats.go/jetstream"
)

// handled records the detections handed to it.
type handled struct {
	mu  sync.Mutex
	ids []string
}

func (h *handled) Handle(_ context.Context, d detectors.Detection) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ids = append(h.ids, d.ID)
	return nil
}

func (h *handled) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...)
}

// TestRespondTakesASensorsSilence: a sensor silent for every vendor has no vendor; its
// detection (stored on killswitch.detections._) reaches the responder like any other,
// where it was once terminated as undecodable. A detection with neither vendor nor
// sensor is still terminated.
func TestRespondTakesASensorsSilence(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js, err := jetstream.New(testharness.Connect(t, testharness.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureDetectionsStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	sink := Sink(js, nil)
	sensor := detectors.Detection{ID: "det-sensor", Detector: detectors.KindSilence, Severity: detectors.SeverityMedium,
		Sensor: "gw-2", DetectedAt: t0, Reason: "no telemetry from sensor gw-2 (for any vendor)"}
	nobody := detectors.Detection{ID: "det-nobody", Detector: detectors.KindSilence, Severity: detectors.SeverityMedium, DetectedAt: t0}
	vendor := detectors.Detection{ID: "det-vendor", Detector: detectors.KindSilence, Severity: detectors.SeverityMedium,
		Key: detectors.Key{Vendor: "mailer"}, DetectedAt: t0}
	for _, d := range []detectors.Detection{sensor, nobody, vendor} {
		if err := sink.Detect(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	h := &handled{}
	done := make(chan error, 1)
	go func() { done <- Respond(ctx, RespondConfig{JS: js, Responder: h}) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.got()) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // time for a wrong third
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := h.got()
	if len(got) != 2 || !(got[0] == "det-sensor" && got[1] == "det-vendor" || got[0] == "det-vendor" && got[1] == "det-sensor") {
		t.Fatalf("handled %q, want det-sensor and det-vendor", got)
	}
}
