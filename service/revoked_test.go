package service_test

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// A credential is revoked through the real Vault and the revocation verified; then the
// same credential moves 1 byte (a copy of the secret, or a path that does not depend on
// Vault): a critical use_after_revocation detection joins the incident, the shipped
// playbook escalates it (critical, notify, nothing destructive), a human is paged on the
// vendor's notification subject, the metric counts it, and /api/incidents shows it.
func TestServiceUseAfterRevocation(t *testing.T) {
	rig := newVaultRig(t, "mailer")
	s := start(t, options{cfg: capConfig(rig.inv), execs: rig.execs})
	pages, err := s.nc.SubscribeSync("killswitch.notify.mailer")
	if err != nil {
		t.Fatal(err)
	}
	s.publish(t, crossing("mailer", "mailer-api"))
	var contained incidents.Incident
	waitFor(t, "mailer contained", func() bool {
		for _, in := range s.incidents(t) {
			if in.Vendor == "mailer" && in.State == incidents.StateContained && in.ContainedAt != nil {
				contained = in
				return true
			}
		}
		return false
	})
	if rig.alive(t, "mailer") {
		t.Fatal("the token still works after a verified revocation")
	}
	// Telemetry dated before the revocation is late news, not a use after it.
	s.publish(t, telemetry.Event{Time: contained.ContainedAt.Add(-time.Second), Vendor: "mailer", Credential: "mailer-api",
		Dst: "203.0.113.9", DstPort: 443, Bytes: 5000, Sensor: "gw-1"})
	// One byte after it.
	at := time.Now().UTC()
	if !at.After(*contained.ContainedAt) {
		at = contained.ContainedAt.Add(time.Millisecond)
	}
	s.publish(t, telemetry.Event{Time: at, Vendor: "mailer", Credential: "mailer-api", Dst: "198.51.100.7", DstPort: 443, Bytes: 1, Sensor: "gw-1"})
	var in incidents.Incident
	waitFor(t, "use_after_revocation on the incident, decided on", func() bool {
		for _, x := range s.incidents(t) {
			if x.ID == contained.ID && slices.Contains(x.Detectors, detectors.KindUseAfterRevocation) && len(x.Decisions) >= 2 {
				in = x
				return true
			}
		}
		return false
	})
	var uar []incidents.DetectionRef
	for _, d := range in.Detections {
		if d.Detector == detectors.KindUseAfterRevocation {
			uar = append(uar, d)
		}
	}
	if len(uar) != 1 || uar[0].Severity != detectors.SeverityCritical || uar[0].Observed != 1 || !strings.Contains(uar[0].Reason, contained.ID) {
		t.Fatalf("use_after_revocation detections: %+v (the one dated before the revocation must not count)", uar)
	}
	last := in.Decisions[len(in.Decisions)-1]
	if last.Severity != "critical" || !slices.Contains(last.Playbooks, "killswitch.playbooks.use_after_revocation") || last.Trigger != uar[0].ID {
		t.Fatalf("decision on it: %+v", last)
	}
	revocations := 0
	for _, a := range in.Actions {
		if a.Type.Destructive() {
			revocations++
		}
	}
	if revocations != 1 {
		t.Fatalf("%d destructive actions, want the one revocation (nothing proposed again): %+v", revocations, in.Actions)
	}
	// The page with the evidence (the notify of the first decision may come first).
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := pages.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("no page for the use after revocation: %v", err)
		}
		if bytes.Contains(m.Data, []byte(`"kind":"use_after_revocation"`)) && bytes.Contains(m.Data, []byte(`"page":true`)) &&
			bytes.Contains(m.Data, []byte(contained.ID)) {
			break
		}
	}
	if code, b := s.api(t, http.MethodGet, "/metrics", ""); code != http.StatusOK || !bytes.Contains(b, []byte("killswitch_use_after_revocation_total 1")) {
		t.Fatalf("/metrics: %d, use after revocation not counted once", code)
	}
	verifyLedger(t, s)
}
