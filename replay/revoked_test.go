package replay

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
)

// An attack is contained (a cap breach, its credential's revocation planned) and the
// credential keeps moving data at its normal, small volume: the incident shows
// use_after_revocation, with its detections bounded (one per 5m bucket) and its bytes
// those after containment, in the JSON and the HTML report; another credential of the
// vendor is not flagged.
func TestReplayReportsUseAfterRevocation(t *testing.T) {
	inv := killswitch.Inventory{"mailer": {
		Caps: []killswitch.Cap{{Credential: "mailer-api", Bytes: 1_000_000, Per: time.Hour}},
		Credentials: map[string]killswitch.Credential{
			"mailer-api":  {Kind: killswitch.CredTokenAccessor, Accessor: "acc-1"},
			"mailer-smtp": {Kind: killswitch.CredTokenAccessor, Accessor: "acc-2"},
		},
	}}
	t0 := time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)
	var b strings.Builder
	line := func(at time.Time, cred string, n int64) {
		fmt.Fprintf(&b, `{"time":%q,"vendor":"mailer","credential":%q,"dst":"203.0.113.7","bytes":%d,"sensor":"gw"}`+"\n", at.Format(time.RFC3339Nano), cred, n)
	}
	line(t0, "mailer-api", 900_000)
	line(t0.Add(time.Second), "mailer-api", 1_200_000) // crosses the cap twice over: critical, revoked
	var after int64
	for i := range 20 { // 20 minutes more, one small event a minute on each credential
		at := t0.Add(time.Minute + time.Duration(i)*time.Minute)
		line(at, "mailer-api", 1000)
		line(at.Add(time.Second), "mailer-smtp", 500)
		after += 1000
	}
	path := filepath.Join(t.TempDir(), "t.ndjson")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := replayFile(t, path, Options{Vendors: inv, NewActor: PlanActions(actions.Settings{}, inv), PlannedContains: true})
	if len(rep.Incidents) != 1 {
		t.Fatalf("%d incidents, want 1: %+v", len(rep.Incidents), rep.Incidents)
	}
	in := rep.Incidents[0]
	u := in.UseAfterRevocation
	if in.ContainedAt == nil || u == nil || in.Credential != "mailer-api" {
		t.Fatalf("incident: %+v", in)
	}
	hasKind := false
	for _, k := range in.Detectors {
		hasKind = hasKind || k == string(detectors.KindUseAfterRevocation)
	}
	// minutes 1..20 after the breach fall in the buckets 10:00, :05, :10, :15 and :20
	if !hasKind || u.Detections != 5 || u.Bytes != after || in.BytesAfterContainment != after || u.FirstAt != ts(t0.Add(time.Minute)) {
		t.Fatalf("use after revocation: %+v, bytes after containment %d, want 5 detections and %d bytes", u, in.BytesAfterContainment, after)
	}
	if rep.Summary.UseAfterRevocation != 1 || rep.Summary.BytesAfterRevocation != after {
		t.Errorf("summary: %+v", rep.Summary)
	}
	var js, html bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"use_after_revocation": {`) || !strings.Contains(html.String(), `pill uar`) {
		t.Errorf("the reports do not flag it")
	}
}
