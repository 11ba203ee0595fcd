package console

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/pipeline"
)

// fakeKiller records who asked for what.
type fakeKiller struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeKiller) took(s string) { f.mu.Lock(); f.calls = append(f.calls, s); f.mu.Unlock() }

func (f *fakeKiller) Plan(_ context.Context, v string) (pipeline.KillPlan, error) {
	return pipeline.KillPlan{Vendor: v, Mode: killswitch.ModeEnforce, Enumerated: 1, Steps: []actions.PlanStep{
		{Credential: "entity:" + v, Type: killswitch.ActionDisableEntity, Plan: &actions.Plan{Summary: "disable identity entity " + v}},
		{Credential: v + "-api", Type: killswitch.ActionRevokeTokenAccessor, Plan: &actions.Plan{Summary: "revoke token fp:1"}},
	}}, nil
}
func (f *fakeKiller) Order(_ context.Context, v, by, _ string) (pipeline.KillOrder, error) {
	f.took("kill " + v + " by " + by)
	return pipeline.KillOrder{ID: "kill-1", Vendor: v, State: pipeline.KillDone}, nil
}
func (f *fakeKiller) Approve(_ context.Context, id, by string) (pipeline.KillOrder, error) {
	f.took("approve " + id + " by " + by)
	return pipeline.KillOrder{ID: id, State: pipeline.KillDone}, nil
}
func (f *fakeKiller) Reject(_ context.Context, id, by, _ string) (pipeline.KillOrder, error) {
	f.took("reject " + id + " by " + by)
	return pipeline.KillOrder{ID: id, State: pipeline.KillRejected}, nil
}
func (f *fakeKiller) Orders(context.Context) ([]pipeline.KillOrder, error) {
	return []pipeline.KillOrder{{ID: "kill-1", Vendor: "mailer", State: pipeline.KillPending, RequestedBy: "root", Reason: "breached"}}, nil
}
func (f *fakeKiller) Get(_ context.Context, id string) (pipeline.KillOrder, uint64, error) {
	return pipeline.KillOrder{ID: id}, 1, nil
}
func (f *fakeKiller) Restore(_ context.Context, id, by, _ string) (pipeline.Restoration, error) {
	f.took("restore " + id + " by " + by)
	return pipeline.Restoration{Incident: id, Vendor: "mailer", Note: incidents.RestoreNote{Complete: true, Steps: []incidents.RestoreStep{
		{Credential: "approle:mailer:fp:1", Type: killswitch.ActionDestroySecretID, Outcome: incidents.RestoreReissued}}},
		Wrapped: map[string]pipeline.WrappedItem{"approle:mailer:fp:1": {Token: "hvs.wrapping-token-once", ExpiresAt: time.Now().Add(time.Hour)}}}, nil
}
func (f *fakeKiller) Holds(context.Context, time.Time) ([]pipeline.Hold, error) { return nil, nil }

// The kills page shows the whole plan before anything runs, and the buttons by role;
// a viewer cannot order; an admin's order, approval and restore are the admin's; the
// wrapping tokens of a restore are shown on its answer page.
func TestKillPages(t *testing.T) {
	r := newRig(t)
	k := &fakeKiller{}
	c, err := New(Config{Users: testUsers, Incidents: fakeIncidents{r.in}, Controller: r.ctl, Clock: r.clock,
		Killer: k, Vendors: []string{"crm", "mailer"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	r.c, r.srv = c, srv
	viewer, admin := r.login(t, "tok-viewer"), r.login(t, "tok-admin")

	_, body := viewer.get(t, "/ui/kills?plan=mailer")
	if strings.Contains(body, `id="kill-form"`) || strings.Contains(body, `id="kill-plan"`) || !strings.Contains(body, "kill-1") {
		t.Fatalf("a viewer's kills page: plan or form shown, or no orders:\n%s", body)
	}
	_, body = admin.get(t, "/ui/kills?plan=mailer")
	for _, want := range []string{`id="kill-plan"`, "entity:mailer", "disable identity entity mailer", `id="kill-form"`, "approve-kill"} {
		if !strings.Contains(body, want) {
			t.Fatalf("the admin's kills page lacks %q:\n%s", want, body)
		}
	}
	if code, _ := viewer.postForm(t, "/ui/vendors/mailer/kill", url.Values{"reason": {"x"}}); code != http.StatusForbidden {
		t.Fatalf("viewer kill: %d", code)
	}
	if code, _ := admin.postForm(t, "/ui/vendors/mailer/kill", url.Values{}); code != http.StatusBadRequest {
		t.Fatalf("kill without a reason: %d", code)
	}
	if code, body := admin.postForm(t, "/ui/vendors/mailer/kill", url.Values{"reason": {"breached"}}); code != http.StatusOK {
		t.Fatalf("admin kill: %d %s", code, body)
	}
	if code, body := admin.postForm(t, "/ui/kills/kill-1/approve", url.Values{}); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, body)
	}
	_, body = admin.get(t, "/ui/incidents/"+r.in.ID)
	if !strings.Contains(body, `id="restore-form"`) {
		t.Fatalf("the incident page offers no restore to an admin:\n%s", body)
	}
	code, body := admin.postForm(t, "/ui/incidents/"+r.in.ID+"/restore", url.Values{"reason": {"false positive"}})
	if code != http.StatusOK || !strings.Contains(body, "hvs.wrapping-token-once") || !strings.Contains(body, "shown only now") {
		t.Fatalf("restore page: %d\n%s", code, body)
	}
	want := []string{"kill mailer by root", "approve kill-1 by root", "restore " + r.in.ID + " by root"}
	if strings.Join(k.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("killer calls %q, want %q", k.calls, want)
	}
}

// postForm posts form fields with the CSRF header.
func (cl *client) postForm(t testing.TB, path string, form url.Values) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, cl.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(CSRFHeader, cl.csrf)
	resp, err := cl.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
