package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// raw publishes bodies as they are on subjects: the attacker, holding a sensor's
// credential (publishing telemetry is all it allows).
func (r *rig) raw(msgs ...[2]string) {
	r.t.Helper()
	nc := r.ks.Connect(r.t, "sensor")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, m := range msgs {
		if _, err := js.Publish(context.Background(), m[0], []byte(m[1])); err != nil {
			r.t.Fatalf("publish on %s: %v", m[0], err)
		}
	}
}

// deadLetters counts the dead letters by reason.
func (r *rig) deadLetters() map[string]int {
	r.t.Helper()
	nc := r.ks.Connect(r.t, "service")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	st, err := js.Stream(ctx, telnats.DefaultDeadLetterStream)
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		if m, err := st.GetMsg(ctx, seq); err == nil {
			out[m.Header.Get(telnats.HeaderReason)]++
		}
	}
	return out
}

// TestForgedEventsAtTheDoor: an attacker publishes, on the telemetry subjects, events
// dated 2099 and 1971 for the guarded credential, one dated 1971 for a credential never
// seen, the extreme dates 0001-01-01 and 9999-12-31, a body whose vendor is not the
// subject's, and names with a wildcard, a NUL, a control character and invalid UTF-8.
// Every one is dead-lettered with its reason and moves no state: the breach that
// follows is caught by the cap detector (not blinded by a window in 2099), no
// dormant-credential or new-destination detection fires, and no incident is stamped
// outside the real time.
func TestForgedEventsAtTheDoor(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)
	start := time.Now().UTC()
	ev := func(vendor, cred, at string) string {
		return fmt.Sprintf(`{"time":%q,"vendor":%q,"credential":%q,"dst":"203.0.113.66","bytes":1,"sensor":"gw-1"}`, at, vendor, cred)
	}
	r.publish(normal(20)...)
	forged := [][2]string{
		{"egress.mailer", ev("mailer", "mailer-api", "2099-01-01T00:00:00Z")},
		{"egress.mailer", ev("mailer", "mailer-api", "1971-01-01T00:00:00Z")},
		{"egress.mailer", ev("mailer", "never-seen", "1971-01-01T00:00:00Z")},
		{"egress.mailer", ev("mailer", "mailer-api", "0001-01-01T00:00:00Z")},
		{"egress.mailer", ev("mailer", "mailer-api", "9999-12-31T23:59:59Z")},
		{"egress.mailer", ev("x9999", "mailer-api", start.Format(time.RFC3339Nano))},
		{"egress.mailer", `{"time":"` + start.Format(time.RFC3339Nano) + `","vendor":"ma*","bytes":1}`},
		{"egress.mailer", `{"time":"` + start.Format(time.RFC3339Nano) + `","vendor":"mailer","credential":"a\u0000b","bytes":1}`},
		{"egress.mailer", `{"time":"` + start.Format(time.RFC3339Nano) + `","vendor":"mailer","credential":"a\u001bb","bytes":1}`},
		{"egress.mailer", "{\"time\":\"" + start.Format(time.RFC3339Nano) + "\",\"vendor\":\"mailer\",\"credential\":\"\xff\xfe\",\"bytes\":1}"},
	}
	r.raw(forged...)
	r.publish(append(normal(20), breach())...)
	in := r.waitIncident("contained", func(in incident) bool { return in.State == "contained" })
	if r.alive() {
		t.Fatal("the stolen token still works")
	}

	var dl map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for {
		dl = r.deadLetters()
		n := 0
		for _, c := range dl {
			n += c
		}
		if n >= len(forged) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for reason, want := range map[string]int{"time_in_future": 2, "time_too_old": 3, "vendor_mismatch": 1, "invalid_name": 4} {
		if dl[reason] < want {
			t.Errorf("dead letters %s: %d, want %d (all: %v)", reason, dl[reason], want, dl)
		}
	}

	var full struct {
		Detections []struct {
			Detector   string    `json:"detector"`
			DetectedAt time.Time `json:"detected_at"`
		} `json:"detections"`
		DetectedAt       time.Time `json:"detected_at"`
		FirstAnomalousAt time.Time `json:"first_anomalous_at"`
	}
	code, b := r.api(http.MethodGet, "/api/incidents/"+in.ID, "")
	if code != http.StatusOK || json.Unmarshal(b, &full) != nil {
		t.Fatalf("GET /api/incidents/%s: %d %s", in.ID, code, b)
	}
	end := time.Now().Add(time.Minute)
	var kinds []string
	for _, d := range full.Detections {
		kinds = append(kinds, d.Detector)
		if d.DetectedAt.Before(start.Add(-time.Minute)) || d.DetectedAt.After(end) {
			t.Errorf("a detection is stamped %s, outside the real time", d.DetectedAt)
		}
	}
	if slices.Contains(kinds, "dormant_credential") || slices.Contains(kinds, "new_destination") || !slices.Contains(kinds, "cap") {
		t.Errorf("detections %v: want the cap, and no dormant or new destination from forged times", kinds)
	}
	if full.FirstAnomalousAt.Before(start.Add(-time.Minute)) || full.DetectedAt.After(end) {
		t.Errorf("the incident is stamped %s … %s, outside the real time", full.FirstAnomalousAt, full.DetectedAt)
	}
	// Nothing got past the door to the detectors' own clock guard.
	if _, m := r.api(http.MethodGet, "/metrics", ""); !strings.Contains(string(m), `killswitch_detector_refused_events_total{reason="clock_jump"} 0`) {
		t.Errorf("metrics: %s", grepLines(string(m), "killswitch_detector_refused_events_total"))
	}
	code, b = r.api(http.MethodGet, "/api/incidents", "")
	var all struct {
		Incidents []struct {
			ID               string    `json:"id"`
			Detectors        []string  `json:"detectors"`
			FirstAnomalousAt time.Time `json:"first_anomalous_at"`
			DetectedAt       time.Time `json:"detected_at"`
		} `json:"incidents"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &all) != nil {
		t.Fatalf("GET /api/incidents: %d %s", code, b)
	}
	for _, i := range all.Incidents {
		if i.FirstAnomalousAt.Before(start.Add(-time.Minute)) || i.DetectedAt.After(end) ||
			slices.Contains(i.Detectors, "dormant_credential") || slices.Contains(i.Detectors, "new_destination") {
			t.Errorf("incident %s (%v) stamped %s … %s: made by a forged event", i.ID, i.Detectors, i.FirstAnomalousAt, i.DetectedAt)
		}
	}
	t.Logf("%d forged messages dead-lettered %v; the breach was caught by %v and revoked; %s", len(forged), dl, kinds, r.verifyLedger())
}

// TestStormOfMadeUpVendors: the attack that turned the storm guard into a remote pause
// on main — 22 messages for 11 made-up vendors, each an event dated 1971 followed by a
// current one to a new destination — neither pauses automation nor starts a storm, and
// the real vendor's breach that follows is revoked.
func TestStormOfMadeUpVendors(t *testing.T) {
	t.Parallel()
	r := newRig(t, "incidents: {storm: {vendors: 3, window: 1h}}\n")
	r.ks.Start(t)
	now := time.Now().UTC()
	var msgs [][2]string
	for i := range 11 {
		v := fmt.Sprintf("x%04d", i)
		for _, at := range []time.Time{time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC), now} {
			msgs = append(msgs, [2]string{"egress." + v, fmt.Sprintf(`{"time":%q,"vendor":%q,"credential":"c","dst":"198.51.100.%d","bytes":1000000}`,
				at.Format(time.RFC3339Nano), v, i)})
		}
	}
	r.raw(msgs...)
	r.publish(append(normal(20), breach())...)
	r.waitIncident("contained", func(in incident) bool { return in.State == "contained" })
	if r.alive() {
		t.Fatal("the stolen token still works")
	}
	code, b := r.api(http.MethodGet, "/api/status", "")
	var st struct {
		Paused bool            `json:"paused"`
		Storm  json.RawMessage `json:"storm"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &st) != nil || st.Paused || st.Storm != nil {
		t.Fatalf("/api/status after the made-up storm: %d %s", code, b)
	}
	t.Logf("%d messages for 11 made-up vendors: not paused, no storm, dead letters %v; the real breach was revoked", len(msgs), r.deadLetters())
}
