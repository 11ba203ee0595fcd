package demo

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/nats-io/nats.go"
)

func announce(t *testing.T, tl *timeline, kind, vendor string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	tl.event(&nats.Msg{Subject: "killswitch.events." + kind + "." + vendor, Data: b})
}

// TestTimelineSkipsHistoryHandledAgain: after a failover the partition's new owner
// handles the killed instance's unacknowledged history again and announces its
// detections, incidents and decisions again; the timeline narrates only what is new
// (once saying that history is handled again), never hides an action, and narrates
// nothing while the history streams.
func TestTimelineSkipsHistoryHandledAgain(t *testing.T) {
	var out bytes.Buffer
	tl := newTimeline(&printer{w: &out})
	crm := detectors.Key{Vendor: "crm", Credential: "crm-key-1"}
	old := detectors.Detection{ID: "det-history", Detector: detectors.KindSpike, Severity: detectors.SeverityHigh, Key: crm}
	oldInc := incidents.Incident{ID: "inc-history", Vendor: "crm", Credential: "crm-key-1", Detections: []incidents.DetectionRef{{ID: old.ID}}}
	announce(t, tl, "detection", "crm", old)
	announce(t, tl, "incident", "crm", oldInc)
	if out.Len() != 0 {
		t.Fatalf("the history was narrated: %q", out.String())
	}

	tl.live(&credential{vendor: "mailer", cred: "mailer-key-1"})
	tl.first(time.Now())
	// the new owner's own incident for a history detection, first
	announce(t, tl, "incident", "crm", incidents.Incident{ID: "inc-new-owner", Vendor: "crm", Credential: "crm-key-1",
		Detections: []incidents.DetectionRef{{ID: old.ID}}})
	announce(t, tl, "detection", "crm", old)
	announce(t, tl, "incident", "crm", oldInc)
	announce(t, tl, "decision", "crm", playbooks.Result{ID: "dec-history", DetectionID: old.ID})
	announce(t, tl, "action", "crm", incidents.ActionRef{ID: "act-crm", Type: "notify", Target: "crm", Status: incidents.ActionApplied})
	attack := detectors.Detection{ID: "det-attack", Detector: detectors.KindSpike, Severity: detectors.SeverityCritical,
		Key: detectors.Key{Vendor: "mailer", Credential: "mailer-key-1"}}
	announce(t, tl, "detection", "mailer", attack)

	got := out.String()
	for _, want := range []string{"AGAIN", "handled again", "ACT", "notify crm", "critical spike on mailer/mailer-key-1"} {
		if !strings.Contains(got, want) {
			t.Errorf("timeline lacks %q:\n%s", want, got)
		}
	}
	for _, hidden := range []string{"crm/crm-key-1", "inc-history", "inc-new-owner", "DECIDE"} {
		if strings.Contains(got, hidden) {
			t.Errorf("timeline narrates history handled again (%q):\n%s", hidden, got)
		}
	}
	if n := strings.Count(got, "AGAIN"); n != 1 {
		t.Errorf("%d AGAIN lines, want 1:\n%s", n, got)
	}
}
