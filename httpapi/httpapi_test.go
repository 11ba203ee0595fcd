package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/users"
)

// testUsers makes a users file with one user per role (named after the role, the
// admin "ana") and returns it with their tokens.
func testUsers(t *testing.T) (*users.Store, map[users.Role]string) {
	t.Helper()
	st := users.Open(filepath.Join(t.TempDir(), users.FileName), users.Options{})
	toks := map[users.Role]string{}
	for _, r := range users.Roles() {
		name := string(r)
		if r == users.Admin {
			name = "ana"
		}
		_, tok, err := st.Add(context.Background(), name, r)
		if err != nil {
			t.Fatal(err)
		}
		toks[r] = tok
	}
	return st, toks
}

type fakeBackend struct {
	incidents []*incidents.Incident
	approved  []string
	paused    bool
}

func (f *fakeBackend) Incidents(context.Context) ([]*incidents.Incident, error) {
	return f.incidents, nil
}
func (f *fakeBackend) Incident(_ context.Context, id string) (*incidents.Incident, error) {
	for _, in := range f.incidents {
		if in.ID == id {
			return in, nil
		}
	}
	return nil, fmt.Errorf("incident %s: %w", id, ErrNotFound)
}
func (f *fakeBackend) Approve(_ context.Context, id, who, _ string) error {
	switch id {
	case "held-1":
		f.approved = append(f.approved, id+" by "+who)
		return nil
	case "old-1":
		return fmt.Errorf("action %s: approval window closed: %w", id, ErrExpired)
	}
	return fmt.Errorf("action %s: %w", id, ErrNotFound)
}
func (f *fakeBackend) Reject(ctx context.Context, id, who, c string) error {
	return f.Approve(ctx, id, who, c)
}
func (f *fakeBackend) Pause(context.Context, string, string) error { f.paused = true; return nil }
func (f *fakeBackend) Resume(context.Context, string) error        { f.paused = false; return nil }
func (f *fakeBackend) ResetBreaker(context.Context, string) error  { return nil }
func (f *fakeBackend) Status(context.Context) (Status, error) {
	return Status{Paused: f.paused, Mode: "enforce"}, nil
}

func TestAPI(t *testing.T) {
	be := &fakeBackend{incidents: []*incidents.Incident{
		{ID: "inc-a", Vendor: "mailer", State: incidents.StateContained},
		{ID: "inc-b", Vendor: "crm", State: incidents.StateOpen},
	}}
	m := metrics.New()
	m.Events.Add(3)
	notReady := errors.New("jetstream not reachable")
	ready := error(nil)
	st, toks := testUsers(t)
	token := toks[users.Admin]
	h, err := New(Config{Users: st, Gatherer: m.Registry, Incidents: be, Controller: be,
		Ready: func(context.Context) error { return ready }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	do := func(method, path, tok, body string) (int, string) {
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
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name, method, path, tok, body string
		code                          int
		want                          string
	}{
		{"health needs no token", "GET", "/healthz", "", "", 200, `"ok"`},
		{"ready", "GET", "/readyz", "", "", 200, `"ready"`},
		{"metrics without token", "GET", "/metrics", "", "", 401, "bearer"},
		{"metrics with wrong token", "GET", "/metrics", "wrong-token-wrong-token", "", 401, "bearer"},
		{"metrics", "GET", "/metrics", token, "", 200, "killswitch_events_total 3"},
		{"incidents without token", "GET", "/api/incidents", "", "", 401, ""},
		{"incidents", "GET", "/api/incidents?state=open", token, "", 200, `"inc-b"`},
		{"bad limit", "GET", "/api/incidents?limit=0", token, "", 400, "limit"},
		{"incident", "GET", "/api/incidents/inc-a", token, "", 200, `"mailer"`},
		{"unknown incident", "GET", "/api/incidents/nope", token, "", 404, "not found"},
		{"approve without token", "POST", "/api/actions/held-1/approve", "", `{"approver":"ana"}`, 401, ""},
		{"approve as someone else", "POST", "/api/actions/held-1/approve", token, `{"approver":"bob"}`, 400, `approver \"bob\" is not the authenticated user \"ana\"`},
		{"pause as someone else", "POST", "/api/pause", token, `{"who":"bob"}`, 400, "not the authenticated user"},
		{"approve with unknown field", "POST", "/api/actions/held-1/approve", token, `{"approver":"ana","x":1}`, 400, "unknown field"},
		{"approve unknown action", "POST", "/api/actions/nope/approve", token, `{"approver":"ana"}`, 404, "not found"},
		{"approve expired action", "POST", "/api/actions/old-1/approve", token, `{"approver":"ana"}`, 410, "approval window closed"},
		{"approve", "POST", "/api/actions/held-1/approve", token, `{"approver":"ana"}`, 200, `"held-1"`},
		{"approve without approver", "POST", "/api/actions/held-1/approve", token, `{"comment":"seen"}`, 200, `"held-1"`},
		{"pause", "POST", "/api/pause", token, `{"who":"ana","reason":"drill"}`, 200, `"paused": true`},
		{"resume", "POST", "/api/resume", token, `{}`, 200, `"paused": false`},
		{"wrong method", "DELETE", "/api/pause", token, "", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(tt.method, tt.path, tt.tok, tt.body)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("%s %s = %d %s; want %d containing %q", tt.method, tt.path, code, body, tt.code, tt.want)
			}
		})
	}
	if len(be.approved) != 2 || be.approved[0] != "held-1 by ana" || be.approved[1] != "held-1 by ana" {
		t.Fatalf("approved = %v", be.approved)
	}
	ready = notReady
	if code, body := do("GET", "/readyz", "", ""); code != 503 || !strings.Contains(body, "jetstream") {
		t.Fatalf("readyz when not ready = %d %s", code, body)
	}
	if _, err := New(Config{}); !errors.Is(err, ErrNoUsers) {
		t.Fatalf("no authenticator accepted: %v", err)
	}
}

// vetoBackend answers the approvals routes: one held action and one veto window.
type vetoBackend struct {
	fakeBackend
	vetoed []string
}

func (b *vetoBackend) Pending(context.Context) (Pending, error) {
	now := time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)
	return Pending{Now: now, VetoWindows: []PendingAction{{ID: "act-w", State: "veto_window", Guard: "veto_window",
		Since: now.Add(-30 * time.Second), Deadline: now.Add(time.Minute), RemainingSeconds: 60, VetoWindow: "1m30s"}}}, nil
}

func (b *vetoBackend) Veto(_ context.Context, id, who, _ string) error {
	if id != "act-w" {
		return fmt.Errorf("action %s: %w", id, ErrConflict)
	}
	b.vetoed = append(b.vetoed, id+" by "+who)
	return nil
}

// GET /api/approvals never answers null lists, nor GET /api/incidents with none; a
// veto is the authenticated user's (a body naming someone else is refused); without
// an Approvals backend both routes answer 501.
func TestApprovalsAndVetoRoutes(t *testing.T) {
	st, toks := testUsers(t)
	be := &vetoBackend{}
	h, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be, Approvals: be})
	if err != nil {
		t.Fatal(err)
	}
	bare, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name         string
		h            http.Handler
		method, path string
		role         users.Role
		body         string
		code         int
		want         string
	}{
		{"no incidents", h, "GET", "/api/incidents", users.Viewer, "", 200, `"incidents": []`},
		{"approvals", h, "GET", "/api/approvals", users.Viewer, "", 200, `"approvals": []`},
		{"veto windows", h, "GET", "/api/approvals", users.Viewer, "", 200, `"remaining_seconds": 60`},
		{"veto by a viewer", h, "POST", "/api/actions/act-w/veto", users.Viewer, `{}`, 403, "needs the approver role"},
		{"veto as someone else", h, "POST", "/api/actions/act-w/veto", users.Approver, `{"approver":"ana"}`, 400, "not the authenticated user"},
		{"veto", h, "POST", "/api/actions/act-w/veto", users.Approver, `{"comment":"planned"}`, 200, `"act-w"`},
		{"veto too late", h, "POST", "/api/actions/act-x/veto", users.Approver, `{}`, 409, "conflict"},
		{"no backend: list", bare, "GET", "/api/approvals", users.Viewer, "", 501, "not available"},
		{"no backend: veto", bare, "POST", "/api/actions/act-w/veto", users.Admin, `{}`, 501, "not available"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+toks[c.role])
			w := httptest.NewRecorder()
			c.h.ServeHTTP(w, req)
			if w.Code != c.code || !strings.Contains(w.Body.String(), c.want) {
				t.Fatalf("%d %s; want %d containing %q", w.Code, w.Body, c.code, c.want)
			}
		})
	}
	if len(be.vetoed) != 1 || be.vetoed[0] != "act-w by approver" {
		t.Fatalf("vetoes %v", be.vetoed)
	}
}

// adminHandler returns the API on be and an admin's token.
func adminHandler(t *testing.T, be *fakeBackend) (http.Handler, string) {
	t.Helper()
	st, toks := testUsers(t)
	h, err := New(Config{Users: st, Gatherer: metrics.New().Registry, Incidents: be, Controller: be,
		Ready: func(context.Context) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return h, toks[users.Admin]
}

func TestBodyLimits(t *testing.T) {
	be := &fakeBackend{}
	h, token := adminHandler(t, be)
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, tc := range []struct {
		name, body string
		want       int
	}{
		{"one object", `{"approver":"ana"}`, 200},
		{"white space after", "{\"approver\":\"ana\"}\n \t", 200},
		{"text after", `{"approver":"ana"} rm -rf`, 400},
		{"second object", `{"approver":"ana"}{"approver":"eve"}`, 400},
		{"unknown field", `{"approver":"ana","role":"admin"}`, 400},
		{"not JSON", `approver=ana`, 400},
		{"just over the limit", `{"approver":"ana","comment":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, 413},
		{"10 MB", `{"comment":"` + strings.Repeat("x", 10<<20) + `"}`, 413},
		{"10 MB after the object", `{"approver":"ana"}` + strings.Repeat(" ", 10<<20), 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL+"/api/actions/held-1/approve", strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, b)
			}
		})
	}
}

// TestSlowClient: a client that declares a body and never sends it is cut off by the
// server's read timeout instead of holding the connection open.
func TestSlowClient(t *testing.T) {
	be := &fakeBackend{}
	h, token := adminHandler(t, be)
	s := NewServer(h)
	if s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.ReadHeaderTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Fatalf("a timeout or limit is not set: %+v", s)
	}
	s.ReadTimeout = 300 * time.Millisecond // the shipped 10 s, shortened for the test
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer s.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", token)
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.ReadAll(c) // returns when the server closes the connection
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the connection was held open %s", d)
	}
	if be.paused {
		t.Fatal("a truncated body paused automation")
	}
}
