package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/users"
)

// fakeUsers authenticates fixed tokens.
type fakeUsers map[string]users.User

func (f fakeUsers) Authenticate(_ context.Context, token string) (users.User, error) {
	if u, ok := f[token]; ok {
		return u, nil
	}
	return users.User{}, fmt.Errorf("%w: no such token", users.ErrUnauthenticated)
}

// fakeIncidents serves fixed incidents.
type fakeIncidents []*incidents.Incident

func (f fakeIncidents) Incidents(context.Context) ([]*incidents.Incident, error) { return f, nil }

func (f fakeIncidents) Incident(_ context.Context, id string) (*incidents.Incident, error) {
	for _, in := range f {
		if in.ID == id {
			return in, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", incidents.ErrNotFound, id)
}

// fakeController records what it is asked and reports fixed pending actions.
type fakeController struct {
	pending httpapi.Pending
	mu      sync.Mutex
	calls   []string
}

func (f *fakeController) record(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	return nil
}

func (f *fakeController) Approve(_ context.Context, id, who, _ string) error {
	if id == "gone" {
		return fmt.Errorf("%w: window passed", httpapi.ErrExpired)
	}
	return f.record("approve " + id + " by " + who)
}
func (f *fakeController) Reject(_ context.Context, id, who, _ string) error {
	return f.record("reject " + id + " by " + who)
}
func (f *fakeController) Veto(_ context.Context, id, who, _ string) error {
	return f.record("veto " + id + " by " + who)
}
func (f *fakeController) Pause(_ context.Context, who, _ string) error {
	return f.record("pause by " + who)
}
func (f *fakeController) Resume(_ context.Context, who string) error {
	return f.record("resume by " + who)
}
func (f *fakeController) ResetBreaker(_ context.Context, who string) error {
	return f.record("reset by " + who)
}
func (f *fakeController) Status(context.Context) (httpapi.Status, error) {
	return httpapi.Status{Mode: "enforce", Ledger: &httpapi.LedgerStatus{Integrity: "ok", HeadSeq: 42, Appends: "failing",
		FailingSince: time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC), FailedAppends: 3, LastFailure: "nats: message size exceeds maximum allowed"},
		Cluster: &httpapi.ClusterStatus{Instance: "ks1", Partitions: 4, Members: []httpapi.ClusterMember{
			{Member: "ks1", Self: true, Alive: true, Partitions: []int{0, 1}}, {Member: "ks2", Alive: true, Partitions: []int{2, 3}}}}}, nil
}
func (f *fakeController) Pending(context.Context) (httpapi.Pending, error) { return f.pending, nil }

func (f *fakeController) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

var testUsers = fakeUsers{
	"tok-viewer":   {Name: "val", Role: users.Viewer},
	"tok-approver": {Name: "ana", Role: users.Approver},
	"tok-admin":    {Name: "root", Role: users.Admin},
}

// rig is a console on fakes with one incident, one approval and one veto window.
type rig struct {
	c     *Console
	srv   *httptest.Server
	ctl   *fakeController
	clock *clock.Manual
	in    *incidents.Incident
}

func newRig(t testing.TB) *rig {
	t.Helper()
	now := time.Date(2026, 2, 5, 12, 0, 0, 0, time.UTC)
	mc := clock.NewManual(now)
	in := dayIncident(now)
	ctl := &fakeController{pending: httpapi.Pending{Now: now,
		Approvals: []httpapi.PendingAction{{ID: "act-held", Incident: in.ID, Vendor: "mailer", Credential: "mailer-api",
			Type: "vault.revoke_token_accessor", Target: "acc-1", State: "pending", Guard: "playbook", Reason: "requires approval",
			Since: now.Add(-time.Minute), Deadline: now.Add(10 * time.Minute), RemainingSeconds: 600}},
		VetoWindows: []httpapi.PendingAction{{ID: "act-window", Incident: in.ID, Vendor: "mailer", Type: "vault.revoke_token_accessor",
			Target: "acc-2", State: "veto_window", Guard: "veto_window", Since: now, Deadline: now.Add(90 * time.Second),
			RemainingSeconds: 90, VetoWindow: "1m30s"}}}}
	c, err := New(Config{Users: testUsers, Incidents: fakeIncidents{in}, Controller: ctl, Clock: mc,
		SessionTTL: 8 * time.Hour, IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	fillDay(c, in, now)
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	t.Cleanup(c.Close)
	return &rig{c: c, srv: srv, ctl: ctl, clock: mc, in: in}
}

// dayIncident is a contained cap incident with a day of detections behind it.
func dayIncident(now time.Time) *incidents.Incident {
	first := now.Add(-2 * time.Hour)
	contained := now.Add(-time.Hour)
	exp := contained.Sub(first).Seconds()
	in := &incidents.Incident{ID: "inc-0123456789abcdef", Vendor: "mailer", Credential: "mailer-api", State: incidents.StateContained,
		Severity: detectors.SeverityCritical, Detectors: []detectors.Kind{detectors.KindCap, detectors.KindSpike},
		FirstAnomalousAt: first, DetectedAt: first.Add(time.Minute), DecidedAt: &first, ContainedAt: &contained,
		ExposureWindowSeconds: &exp, AnomalousBytes: 3 << 30}
	for i := range 100 {
		at := first.Add(time.Duration(i) * time.Minute)
		in.Detections = append(in.Detections, incidents.DetectionRef{ID: fmt.Sprintf("det-%d", i), Detector: detectors.KindSpike,
			Severity: detectors.SeverityHigh, Score: 0.9, Observed: 5e6, Expected: detectors.Band{Low: 1e6, High: 3e6}, Unit: "bytes/5m",
			FirstAnomalousAt: first, DetectedAt: at, Reason: "volume far above the baseline", Sensor: "egress-gw-7"})
		in.Decisions = append(in.Decisions, incidents.DecisionRef{ID: fmt.Sprintf("dec-%d", i), At: at, Playbooks: []string{"killswitch.playbooks.cap"},
			Reason: "crossed its cap", Severity: "critical"})
	}
	in.DetectionCount = len(in.Detections)
	in.Decisions[len(in.Decisions)-1].Unfinished = true // carrying it out failed: retried
	in.Actions = []incidents.ActionRef{{ID: "act-done", Type: killswitch.ActionType("vault.revoke_token_accessor"), Target: "acc-1",
		Status: incidents.ActionVerified, At: contained}}
	return in
}

// fillDay gives the console a day of one-minute volume for the incident's key and a
// ledger trail of 300 records.
func fillDay(c *Console, in *incidents.Incident, now time.Time) {
	var pts []bucketVolume
	for i := range 24 * 60 {
		at := now.Add(-24 * time.Hour).Add(time.Duration(i) * time.Minute)
		pts = append(pts, bucketVolume{Start: at, Bytes: float64(200_000 + (i%60)*1000)})
	}
	c.volumes.set(in.Key(), pts)
	for i := range 300 {
		payload := `{"action":"act-done","type":"vault.revoke_token_accessor","target":"acc-1","stage":"guard","status":"held","guard":"cooldown","reason":"cooling down"}`
		rec := ledger.Record{Entry: ledger.Entry{Type: ledger.TypeAction, ID: fmt.Sprintf("r-%d", i), Incident: in.ID,
			Time: now.Add(time.Duration(i) * time.Second), Payload: json.RawMessage(payload)}, Seq: uint64(i + 1)}
		c.trails.add(rec)
	}
}

// client is one browser: a cookie jar and the CSRF token of its session.
type client struct {
	hc   *http.Client
	base string
	csrf string
}

func (r *rig) login(t testing.TB, token string) *client {
	t.Helper()
	cl := &client{hc: &http.Client{Jar: newJar(t), CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		base: r.srv.URL}
	resp, err := cl.hc.PostForm(r.srv.URL+"/ui/login", url.Values{"token": {token}, "next": {"/ui/approvals"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/approvals" {
		t.Fatalf("login: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Path != "/ui/" {
		t.Fatalf("session cookie %+v", ck)
	}
	_, body := cl.get(t, "/ui/")
	const marker = `<meta name="csrf-token" content="`
	i := strings.Index(body, marker)
	if i < 0 {
		t.Fatalf("no CSRF token in the page")
	}
	cl.csrf = body[i+len(marker) : i+len(marker)+strings.Index(body[i+len(marker):], `"`)]
	return cl
}

func newJar(t testing.TB) http.CookieJar {
	j, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func (cl *client) get(t testing.TB, path string) (*http.Response, string) {
	t.Helper()
	resp, err := cl.hc.Get(cl.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// post posts path with the CSRF token as a header (csrf "header"), a form field
// ("form"), a wrong one ("wrong") or none (""), and origin as the Origin header.
func (cl *client) post(t testing.TB, path, csrf, origin string) (int, string) {
	t.Helper()
	form := url.Values{"back": {"/ui/approvals"}}
	if csrf == "form" {
		form.Set(CSRFField, cl.csrf)
	}
	req, err := http.NewRequest(http.MethodPost, cl.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	switch csrf {
	case "header":
		req.Header.Set(CSRFHeader, cl.csrf)
	case "wrong":
		req.Header.Set(CSRFHeader, "not-the-token")
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := cl.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Who may do what, with and without the CSRF token, from this site and another.
func TestAccess(t *testing.T) {
	r := newRig(t)
	clients := map[string]*client{"viewer": r.login(t, "tok-viewer"), "approver": r.login(t, "tok-approver"), "admin": r.login(t, "tok-admin")}
	cases := []struct {
		who, path, csrf, origin string
		want                    int
		took                    string
	}{
		{"viewer", "/ui/actions/act-held/approve", "header", "", http.StatusForbidden, ""},
		{"viewer", "/ui/actions/act-window/veto", "form", "", http.StatusForbidden, ""},
		{"viewer", "/ui/pause", "header", "", http.StatusForbidden, ""},
		{"approver", "/ui/actions/act-held/approve", "", "", http.StatusForbidden, ""},
		{"approver", "/ui/actions/act-held/approve", "wrong", "", http.StatusForbidden, ""},
		{"approver", "/ui/actions/act-held/approve", "header", "https://evil.example", http.StatusForbidden, ""},
		{"approver", "/ui/actions/act-held/approve", "header", "", http.StatusOK, "approve act-held by ana"},
		{"approver", "/ui/actions/act-held/reject", "form", "", http.StatusSeeOther, "reject act-held by ana"},
		{"approver", "/ui/actions/act-window/veto", "header", "", http.StatusOK, "veto act-window by ana"},
		{"approver", "/ui/actions/gone/approve", "header", "", http.StatusGone, ""},
		{"approver", "/ui/pause", "header", "", http.StatusForbidden, ""},
		{"approver", "/ui/breaker/reset", "header", "", http.StatusForbidden, ""},
		{"admin", "/ui/pause", "header", "", http.StatusOK, "pause by root"},
		{"admin", "/ui/resume", "header", "", http.StatusOK, "resume by root"},
		{"admin", "/ui/breaker/reset", "form", "", http.StatusSeeOther, "reset by root"},
	}
	for _, tc := range cases {
		t.Run(tc.who+tc.path+"/"+tc.csrf+tc.origin, func(t *testing.T) {
			before := len(r.ctl.took())
			code, body := clients[tc.who].post(t, tc.path, tc.csrf, tc.origin)
			if code != tc.want {
				t.Fatalf("%d %s, want %d", code, body, tc.want)
			}
			took := r.ctl.took()[before:]
			if (tc.took == "") != (len(took) == 0) || (tc.took != "" && took[0] != tc.took) {
				t.Fatalf("the controller took %q, want %q", took, tc.took)
			}
		})
	}
}

// Pages: the buttons follow the role, the headers are strict, nothing is inline.
func TestPages(t *testing.T) {
	r := newRig(t)
	viewer, approver, admin := r.login(t, "tok-viewer"), r.login(t, "tok-approver"), r.login(t, "tok-admin")
	cases := []struct {
		name     string
		cl       *client
		path     string
		want     []string
		wantNot  []string
		wantCode int
	}{
		{"viewer approvals", viewer, "/ui/approvals", []string{"act-held", "act-window", "data-deadline"}, []string{"/approve", "/veto", "/pause"}, 200},
		{"approver approvals", approver, "/ui/approvals", []string{"/ui/actions/act-held/approve", "/ui/actions/act-held/reject", "/ui/actions/act-window/veto"}, []string{"/ui/pause"}, 200},
		{"admin status", admin, "/ui/status", []string{"/ui/pause", "ks2", "2 3", "head #42", `id="ledger-appends">failing`, "3 entries not stored", "message size exceeds maximum", `id="ledger-failing"`}, nil, 200},
		{"incident", approver, "/ui/incidents/inc-0123456789abcdef", []string{"<svg", `class="vol`, `class="band"`, "cooldown", "Ledger trail", `<td class="mono">egress-gw-7</td>`, "/ui/actions/act-held/approve", "not carried out: retrying"}, nil, 200},
		{"list filtered", viewer, "/ui/?vendor=mailer&state=contained", []string{"inc-01234567"}, nil, 200},
		{"list filtered out", viewer, "/ui/?vendor=crm", []string{"No incident matches"}, []string{"inc-01234567"}, 200},
		{"unknown incident", viewer, "/ui/incidents/nope", []string{"not found"}, nil, 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := tc.cl.get(t, tc.path)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("%d, want %d: %s", resp.StatusCode, tc.wantCode, body)
			}
			for _, s := range tc.want {
				if !strings.Contains(body, s) {
					t.Errorf("the page lacks %q", s)
				}
			}
			for _, s := range tc.wantNot {
				if strings.Contains(body, s) {
					t.Errorf("the page has %q", s)
				}
			}
			csp := resp.Header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "default-src 'self'") || strings.Contains(csp, "unsafe-inline") {
				t.Errorf("CSP %q", csp)
			}
			for _, inline := range []string{"<style", "style=", " onclick=", "<script>"} {
				if strings.Contains(body, inline) {
					t.Errorf("inline %q in the page (the CSP blocks it)", inline)
				}
			}
		})
	}
}

// Sessions: none redirects to the login page, a wrong token is refused, a session ends
// when idle, at its TTL, and at logout.
func TestSessions(t *testing.T) {
	r := newRig(t)
	anon := &client{hc: &http.Client{Jar: newJar(t), CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, base: r.srv.URL}
	if resp, _ := anon.get(t, "/ui/status"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/login?next=") {
		t.Fatalf("no session: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := anon.get(t, "/ui/events"); resp.StatusCode != http.StatusSeeOther && resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("events without a session: %d", resp.StatusCode)
	}
	resp, err := anon.hc.PostForm(r.srv.URL+"/ui/login", url.Values{"token": {"guess"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %d %v", resp.StatusCode, resp.Cookies())
	}
	for _, tc := range []struct {
		name  string
		after func(cl *client)
	}{
		{"idle", func(*client) { r.clock.Set(r.clock.Now().Add(time.Hour)) }},
		{"ttl", func(cl *client) {
			for range 9 { // active all along, but past the 8 h TTL
				r.clock.Set(r.clock.Now().Add(59 * time.Minute))
				cl.get(t, "/ui/status")
			}
		}},
		{"logout", func(cl *client) {
			if code, _ := cl.post(t, "/ui/logout", "form", ""); code != http.StatusSeeOther {
				t.Fatalf("logout: %d", code)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := r.login(t, "tok-viewer")
			tc.after(cl)
			if resp, _ := cl.get(t, "/ui/status"); resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("after %s: %d, want the login redirect", tc.name, resp.StatusCode)
			}
		})
	}
}

// Live: a service event reaches a browser's stream, tagged with what changed.
func TestEventsStream(t *testing.T) {
	r := newRig(t)
	cl := r.login(t, "tok-viewer")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.srv.URL+"/ui/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := cl.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	buf := make([]byte, 256)
	if _, err := resp.Body.Read(buf); err != nil { // the stream's opening comment: joined
		t.Fatal(err)
	}
	r.c.hub.relay("killswitch.events.incident.mailer", []byte(`{"id":"inc-1","vendor":"mailer"}`))
	var got strings.Builder
	for !strings.Contains(got.String(), "\n\n") || !strings.Contains(got.String(), "data:") {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("stream: %v (so far %q)", err, got.String())
		}
		got.Write(buf[:n])
	}
	_, data, _ := strings.Cut(got.String(), "data: ")
	var ev liveEvent
	if err := json.Unmarshal([]byte(strings.TrimSpace(data)), &ev); err != nil || ev.Kind != "incident" || ev.Vendor != "mailer" || ev.ID != "inc-1" {
		t.Fatalf("event %q: %+v %v", data, ev, err)
	}
	r.c.Close() // a shutdown ends the stream
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("stream after close: %v", err)
	}
}

// Telemetry is untrusted: an event from the future or the distant past, or one that
// names nothing, is not counted and cannot wipe a key's history.
func TestVolumesBounded(t *testing.T) {
	now := time.Date(2026, 2, 5, 12, 0, 0, 0, time.UTC)
	v := newVolumes(clock.NewManual(now), time.Minute, 60, 2)
	key := detectors.Key{Vendor: "mailer"}
	cases := []struct {
		name string
		msg  string
		want float64 // the key's total over the last hour after it
	}{
		{"counted", `{"time":"2026-02-05T11:59:10Z","vendor":"mailer","bytes":100}`, 100},
		{"from the future", `{"time":"2026-02-06T11:59:10Z","vendor":"mailer","bytes":100}`, 100},
		{"too old", `{"time":"2026-02-04T11:59:10Z","vendor":"mailer","bytes":100}`, 100},
		{"no vendor", `{"time":"2026-02-05T11:59:10Z","bytes":100}`, 100},
		{"garbage", `{"time":`, 100},
		{"credential too", `{"time":"2026-02-05T11:30:00Z","vendor":"mailer","credential":"api","bytes":50}`, 150},
		{"over the key bound", `{"time":"2026-02-05T11:59:10Z","vendor":"crm","bytes":1}`, 150},
	}
	for _, tc := range cases {
		v.observe("egress.x", []byte(tc.msg))
		var total float64
		for _, b := range v.series(key, now.Add(-time.Hour), now) {
			total += b.Bytes
		}
		if total != tc.want {
			t.Fatalf("%s: total %v, want %v", tc.name, total, tc.want)
		}
	}
	if got := v.series(detectors.Key{Vendor: "crm"}, now.Add(-time.Hour), now); got != nil {
		t.Fatalf("a third key was kept past the bound of 2: %v", got)
	}
}

// BenchmarkIncidentPage renders the page of an incident with a day of data (a day of
// one-minute volume, 100 detections and decisions, 300 ledger records) server-side.
func BenchmarkIncidentPage(b *testing.B) {
	r := newRig(b)
	cl := r.login(b, "tok-approver")
	ck := cl.hc.Jar.Cookies(mustURL(b, r.srv.URL+"/ui/"))
	req := httptest.NewRequest(http.MethodGet, "/ui/incidents/"+r.in.ID, nil)
	for _, c := range ck {
		req.AddCookie(c)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		r.c.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("%d", w.Code)
		}
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
