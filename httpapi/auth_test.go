package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/users"
)

// recordingBackend records who each control call was made by.
type recordingBackend struct {
	fakeBackend
	calls []string
}

func (b *recordingBackend) Approve(_ context.Context, id, who, _ string) error {
	b.calls = append(b.calls, "approve "+id+" by "+who)
	return nil
}
func (b *recordingBackend) Reject(_ context.Context, id, who, _ string) error {
	b.calls = append(b.calls, "reject "+id+" by "+who)
	return nil
}
func (b *recordingBackend) Veto(_ context.Context, id, who, _ string) error {
	b.calls = append(b.calls, "veto "+id+" by "+who)
	return nil
}
func (b *recordingBackend) Pending(context.Context) (Pending, error) { return Pending{}, nil }
func (b *recordingBackend) Pause(_ context.Context, who, _ string) error {
	b.calls = append(b.calls, "pause by "+who)
	return nil
}
func (b *recordingBackend) Resume(_ context.Context, who string) error {
	b.calls = append(b.calls, "resume by "+who)
	return nil
}
func (b *recordingBackend) ResetBreaker(_ context.Context, who string) error {
	b.calls = append(b.calls, "breaker by "+who)
	return nil
}

// recordingKiller records who each kill call was made by, into the backend's calls.
type recordingKiller struct{ b *recordingBackend }

func (k recordingKiller) Plan(_ context.Context, v string) (pipeline.KillPlan, error) {
	return pipeline.KillPlan{Vendor: v}, nil
}
func (k recordingKiller) Order(_ context.Context, v, by, _ string) (pipeline.KillOrder, error) {
	k.b.calls = append(k.b.calls, "kill "+v+" by "+by)
	return pipeline.KillOrder{ID: "kill-1", Vendor: v, RequestedBy: by}, nil
}
func (k recordingKiller) Approve(_ context.Context, id, by string) (pipeline.KillOrder, error) {
	k.b.calls = append(k.b.calls, "approve kill "+id+" by "+by)
	return pipeline.KillOrder{ID: id}, nil
}
func (k recordingKiller) Reject(_ context.Context, id, by, _ string) (pipeline.KillOrder, error) {
	k.b.calls = append(k.b.calls, "reject kill "+id+" by "+by)
	return pipeline.KillOrder{ID: id}, nil
}
func (k recordingKiller) Orders(context.Context) ([]pipeline.KillOrder, error) { return nil, nil }
func (k recordingKiller) Get(_ context.Context, id string) (pipeline.KillOrder, uint64, error) {
	return pipeline.KillOrder{ID: id}, 1, nil
}
func (k recordingKiller) Restore(_ context.Context, id, by, _ string) (pipeline.Restoration, error) {
	k.b.calls = append(k.b.calls, "restore "+id+" by "+by)
	return pipeline.Restoration{Incident: id}, nil
}
func (k recordingKiller) Holds(context.Context, time.Time) ([]pipeline.Hold, error) { return nil, nil }

// Every route × every role: each role gets exactly its routes, 403 (naming the role
// needed) on the others, 401 with no or a wrong token; health needs nothing.
func TestRolesPerRoute(t *testing.T) {
	st, toks := testUsers(t)
	be := &recordingBackend{}
	h, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be, Approvals: be,
		Killer: recordingKiller{be}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	do := func(method, path, tok string) (int, map[string]any) {
		t.Helper()
		body := ""
		if method == "POST" {
			body = `{}`
			if strings.Contains(path, "kill") || strings.HasSuffix(path, "/restore") {
				body = `{"reason":"a test"}`
			}
		}
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	paths := map[string]string{ // a concrete path per pattern
		"/api/incidents/{id}":       "/api/incidents/nope",
		"/api/actions/{id}/approve": "/api/actions/held-1/approve",
		"/api/actions/{id}/reject":  "/api/actions/held-1/reject",
		"/api/actions/{id}/veto":    "/api/actions/held-1/veto",
	}
	// want is the status of a permitted call (the fake has no incident "nope").
	want := map[string]int{"/api/incidents/{id}": 404}
	names := map[users.Role]string{users.Viewer: "viewer", users.Approver: "approver", users.Admin: "ana"}
	for _, rt := range Routes() {
		path := paths[rt.Pattern]
		if path == "" {
			path = rt.Pattern
		}
		for _, tc := range []struct {
			who, tok string
			role     users.Role
		}{
			{"no token", "", ""},
			{"wrong token", "ks_00000000_" + strings.Repeat("0", 64), ""},
			{"viewer", toks[users.Viewer], users.Viewer},
			{"approver", toks[users.Approver], users.Approver},
			{"admin", toks[users.Admin], users.Admin},
		} {
			t.Run(rt.Method+" "+rt.Pattern+" as "+tc.who, func(t *testing.T) {
				be.calls = nil
				code, body := do(rt.Method, path, tc.tok)
				switch {
				case tc.role == "":
					if code != 401 {
						t.Fatalf("%d, want 401", code)
					}
				case !tc.role.Allows(rt.Role):
					if code != 403 || body["need"] != string(rt.Role) || !strings.Contains(body["error"].(string), "needs the "+string(rt.Role)+" role") {
						t.Fatalf("%d %v, want 403 naming %s", code, body, rt.Role)
					}
					if len(be.calls) != 0 {
						t.Fatalf("a forbidden call reached the controller: %v", be.calls)
					}
				default:
					w := want[rt.Pattern]
					if w == 0 {
						w = 200
					}
					if code != w {
						t.Fatalf("%d %v, want %d", code, body, w)
					}
					if rt.Method == "POST" && (len(be.calls) != 1 || !strings.HasSuffix(be.calls[0], " by "+names[tc.role])) {
						t.Fatalf("controller calls %v, want one by %s", be.calls, names[tc.role])
					}
				}
			})
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := do("GET", p, ""); code != 200 {
			t.Errorf("%s without a token: %d", p, code)
		}
	}
	// The roles of the README's table.
	for _, tc := range []struct {
		role users.Role
		ok   []string
	}{
		{users.Viewer, []string{"GET /metrics", "GET /api/incidents", "GET /api/incidents/{id}", "GET /api/status", "GET /api/approvals"}},
		{users.Approver, []string{"POST /api/actions/{id}/approve", "POST /api/actions/{id}/reject", "POST /api/actions/{id}/veto"}},
		{users.Admin, []string{"POST /api/pause", "POST /api/resume", "POST /api/breaker/reset"}},
	} {
		for _, rt := range Routes() {
			if strings.Contains(strings.Join(tc.ok, ","), rt.Method+" "+rt.Pattern) && rt.Role != tc.role {
				t.Errorf("%s %s needs %s, want %s", rt.Method, rt.Pattern, rt.Role, tc.role)
			}
		}
	}
}

// A users file that cannot be read authenticates no one (503, fail closed); a removed
// user's token stops working on the next request.
func TestUsersFileChanges(t *testing.T) {
	st, toks := testUsers(t)
	be := &recordingBackend{}
	h, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be})
	if err != nil {
		t.Fatal(err)
	}
	get := func(tok string) int {
		req := httptest.NewRequest("GET", "/api/status", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	if code := get(toks[users.Viewer]); code != 200 {
		t.Fatalf("viewer: %d", code)
	}
	if err := st.Remove(context.Background(), "viewer"); err != nil {
		t.Fatal(err)
	}
	if code := get(toks[users.Viewer]); code != 401 {
		t.Fatalf("removed viewer: %d, want 401", code)
	}
	if err := os.WriteFile(st.Path(), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := get(toks[users.Admin]); code != 503 {
		t.Fatalf("admin with a broken users file: %d, want 503", code)
	}
}

// misdirectedKiller is a cluster instance that does not own any vendor.
type misdirectedKiller struct{ recordingKiller }

func (misdirectedKiller) Order(_ context.Context, v, _, _ string) (pipeline.KillOrder, error) {
	return pipeline.KillOrder{}, &Misdirected{Vendor: v, API: "http://127.0.0.1:9"}
}

// A kill sent to an instance that does not own the vendor is answered 421 with the
// owner's API.
func TestKillMisdirected(t *testing.T) {
	st, toks := testUsers(t)
	be := &recordingBackend{}
	h, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be, Approvals: be,
		Killer: misdirectedKiller{recordingKiller{be}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/api/vendors/mailer/kill", strings.NewReader(`{"reason":"x"}`))
	req.Header.Set("Authorization", "Bearer "+toks[users.Admin])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusMisdirectedRequest || body["api"] != "http://127.0.0.1:9" || !strings.Contains(body["error"], "owns mailer") {
		t.Fatalf("%d %v", resp.StatusCode, body)
	}
}
