package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/metrics"
)

const token = "0123456789abcdef-test-token"

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
	h, err := New(Config{Token: token, Gatherer: m.Registry, Incidents: be, Controller: be,
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
		{"approve without approver", "POST", "/api/actions/held-1/approve", token, `{}`, 400, "approver is required"},
		{"approve with unknown field", "POST", "/api/actions/held-1/approve", token, `{"approver":"ana","x":1}`, 400, "unknown field"},
		{"approve unknown action", "POST", "/api/actions/nope/approve", token, `{"approver":"ana"}`, 404, "not found"},
		{"approve expired action", "POST", "/api/actions/old-1/approve", token, `{"approver":"ana"}`, 410, "approval window closed"},
		{"approve", "POST", "/api/actions/held-1/approve", token, `{"approver":"ana"}`, 200, `"held-1"`},
		{"pause", "POST", "/api/pause", token, `{"who":"ana","reason":"drill"}`, 200, `"paused": true`},
		{"resume", "POST", "/api/resume", token, `{"who":"ana"}`, 200, `"paused": false`},
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
	if len(be.approved) != 1 || be.approved[0] != "held-1 by ana" {
		t.Fatalf("approved = %v", be.approved)
	}
	ready = notReady
	if code, body := do("GET", "/readyz", "", ""); code != 503 || !strings.Contains(body, "jetstream") {
		t.Fatalf("readyz when not ready = %d %s", code, body)
	}
	if _, err := New(Config{Token: "short"}); !errors.Is(err, ErrNoToken) {
		t.Fatalf("short token accepted: %v", err)
	}
}
