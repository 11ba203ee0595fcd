package console

import (
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
)

// An incident with use_after_revocation detections is flagged on the incident list and
// its page shows the latest evidence; one without is not.
func TestUseAfterRevocationFlagged(t *testing.T) {
	r := newRig(t)
	cl := r.login(t, "tok-viewer")
	if _, body := cl.get(t, "/ui/"); strings.Contains(body, "use after revocation") {
		t.Fatal("flagged without a use_after_revocation detection")
	}
	at := r.in.ContainedAt.Add(10 * time.Minute)
	r.in.Detectors = append(r.in.Detectors, detectors.KindUseAfterRevocation)
	r.in.Detections = append(r.in.Detections, incidents.DetectionRef{ID: "det-uar", Detector: detectors.KindUseAfterRevocation,
		Severity: detectors.SeverityCritical, Score: 1, Observed: 18231, Unit: "bytes since revocation", DetectedAt: at,
		Reason: "credential mailer/mailer-api moved 17.8 KiB to 203.0.113.7 after it was revoked"})
	_, list := cl.get(t, "/ui/")
	if !strings.Contains(list, `pill bad uar`) {
		t.Errorf("the incident list does not flag it")
	}
	resp, page := cl.get(t, "/ui/incidents/"+r.in.ID)
	if resp.StatusCode != 200 || !strings.Contains(page, `id="use-after-revocation"`) || !strings.Contains(page, "moved 17.8 KiB to 203.0.113.7 after it was revoked") {
		t.Errorf("the incident page does not show it (%d)", resp.StatusCode)
	}
}
