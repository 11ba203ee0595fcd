package console

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/replay"
	"github.com/killswitch-dev/killswitch/users"
	"go.uber.org/zap"
)

// pageNames are the console's pages (templates/NAME.html, each inside layout.html).
var pageNames = []string{"login", "incidents", "incident", "approvals", "status", "error", "kills", "restored"}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"ts":        fmtTime,
		"tsp":       func(t *time.Time) string { return fmtTime(derefTime(t)) },
		"rfc3339":   func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
		"dur":       fmtSeconds,
		"durp":      func(s *float64) string { return fmtSeconds(derefFloat(s)) },
		"bytes":     fmtBytes,
		"num":       fmtNum,
		"short":     shortID,
		"statecss":  stateCSS,
		"bytesi":    func(n int64) string { return fmtBytes(float64(n)) },
		"derefTime": derefTime,
		// uar: the incident has use_after_revocation detections; uarDetections lists them
		"uar": func(ks []detectors.Kind) bool { return slices.Contains(ks, detectors.KindUseAfterRevocation) },
		"uarDetections": func(ds []incidents.DetectionRef) []incidents.DetectionRef {
			var out []incidents.DetectionRef
			for _, d := range ds {
				if d.Detector == detectors.KindUseAfterRevocation {
					out = append(out, d)
				}
			}
			return out
		},
		"lastRef": func(ds []incidents.DetectionRef) incidents.DetectionRef { return ds[len(ds)-1] },
		"pendingTable": func(f frame, rows []httpapi.PendingAction, back string) pendingTable {
			return pendingTable{Rows: rows, CanApprove: f.CanApprove, CSRF: f.CSRF, Back: back}
		},
		"joinints": func(xs []int) string {
			s := make([]string, len(xs))
			for i, x := range xs {
				s[i] = fmt.Sprint(x)
			}
			return strings.Join(s, " ")
		},
	}
	out := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: templates: %w", err)
		}
		out[name] = t
	}
	return out, nil
}

// pendingTable is the data of the "pending" template: actions waiting on people, with
// the buttons when the user may press them.
type pendingTable struct {
	Rows       []httpapi.PendingAction
	CanApprove bool
	CSRF, Back string
}

// frame is what every page shows around its content.
type frame struct {
	Title string
	Nav   string
	// User is empty on the login page.
	User       string
	Role       users.Role
	CanApprove bool
	CanAdmin   bool
	CSRF       string
	Now        time.Time
	// Status is the service's global state for the banner (nil on the login page).
	Status *httpapi.Status
	// Waiting counts the approvals and veto windows waiting on people.
	Approvals, VetoWindows int
	Content                any
}

// render writes a page through the layout, buffered so a failed render is a clean 500.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name string, content any) {
	f := frame{Title: name, Nav: name, Now: c.cfg.Clock.Now().UTC(), Content: content}
	if v := whoFrom(r.Context()); v.user.Name != "" {
		f.User, f.Role, f.CSRF = v.user.Name, v.user.Role, v.csrf
		f.CanApprove, f.CanAdmin = v.user.Role.Allows(users.Approver), v.user.Role.Allows(users.Admin)
		if st, err := c.cfg.Controller.Status(r.Context()); err == nil {
			f.Status = &st
		} else {
			c.cfg.Log.Warn("console: status", zap.Error(err))
		}
		if p, err := c.cfg.Controller.Pending(r.Context()); err == nil {
			f.Approvals, f.VetoWindows = len(p.Approvals), len(p.VetoWindows)
		}
	}
	if t, ok := content.(titled); ok {
		f.Title = t.title()
	}
	var buf bytes.Buffer
	if err := c.pages[name].Execute(&buf, f); err != nil {
		c.cfg.Log.Error("console: render", zap.String("page", name), zap.Error(err))
		http.Error(w, "the page could not be rendered: see the service's log", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// titled is a page content that names its page.
type titled interface{ title() string }

// fail answers a request that failed, with the status its error calls for.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		c.cfg.Log.Error("console: request failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	if r.Method == http.MethodGet && r.Header.Get("X-Console-Refresh") == "" {
		c.render(w, r, code, "error", errorView{Code: code, Message: err.Error()})
		return
	}
	http.Error(w, err.Error(), code)
}

type errorView struct {
	Code    int
	Message string
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, httpapi.ErrNotFound), errors.Is(err, incidents.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, httpapi.ErrExpired):
		return http.StatusGone
	case errors.Is(err, httpapi.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, httpapi.ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, httpapi.ErrMisdirected):
		return http.StatusMisdirectedRequest
	}
	return http.StatusInternalServerError
}

// incidentsView is the incidents list with its filters.
type incidentsView struct {
	Vendor, State string
	Vendors       []string
	States        []incidents.State
	Rows          []incidentRow
	Total         int
}

type incidentRow struct {
	*incidents.Incident
	Subject    string
	LastAction string
}

// maxListed bounds the incidents the list shows.
const maxListed = 200

func (c *Console) incidentsPage(w http.ResponseWriter, r *http.Request) {
	all, err := c.cfg.Incidents.Incidents(r.Context())
	if err != nil {
		c.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	v := incidentsView{Vendor: q.Get("vendor"), State: q.Get("state"), Total: len(all),
		States: []incidents.State{incidents.StateOpen, incidents.StateContained, incidents.StateClosed}}
	seen := map[string]bool{}
	for _, in := range all {
		if !seen[in.Vendor] {
			seen[in.Vendor] = true
			v.Vendors = append(v.Vendors, in.Vendor)
		}
		if (v.Vendor != "" && in.Vendor != v.Vendor) || (v.State != "" && string(in.State) != v.State) || len(v.Rows) >= maxListed {
			continue
		}
		row := incidentRow{Incident: in, Subject: subject(in.Vendor, in.Credential)}
		if n := len(in.Actions); n > 0 {
			row.LastAction = string(in.Actions[n-1].Status)
		}
		v.Rows = append(v.Rows, row)
	}
	slices.Sort(v.Vendors)
	c.render(w, r, http.StatusOK, "incidents", v)
}

// incidentView is one incident's page.
type incidentView struct {
	In         *incidents.Incident
	Subject    string
	Chart      template.HTML
	ChartNote  string
	Pending    []httpapi.PendingAction
	Guards     []guardRow
	Trail      []trailRow
	TrailNote  string
	Detections []detectionRow
	// Restorable: the incident took something away and is not restored yet (and restore
	// is available here).
	Restorable bool
}

func (v incidentView) title() string { return "Incident " + shortID(v.In.ID) + " · " + v.Subject }

type detectionRow struct {
	incidents.DetectionRef
	Observed, Expected string
}

type guardRow struct {
	At                                         time.Time
	Action, Type, Target, Stage, Guard, Status string
	Reason                                     string
}

type trailRow struct {
	At     time.Time
	Seq    uint64
	What   string
	Detail string
}

func (c *Console) incidentPage(w http.ResponseWriter, r *http.Request) {
	in, err := c.cfg.Incidents.Incident(r.Context(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := c.incidentView(r.Context(), in)
	c.render(w, r, http.StatusOK, "incident", v)
}

// incidentView gathers an incident's page: the chart of its key's volume, its pending
// actions, and its ledger trail with the guard outcomes in it.
func (c *Console) incidentView(ctx context.Context, in *incidents.Incident) incidentView {
	v := incidentView{In: in, Subject: subject(in.Vendor, in.Credential)}
	for _, d := range in.Detections {
		row := detectionRow{DetectionRef: d, Observed: fmtNum(d.Observed), Expected: fmtNum(d.Expected.Low) + " – " + fmtNum(d.Expected.High)}
		if strings.HasPrefix(d.Unit, "bytes") {
			row.Observed, row.Expected = fmtBytes(d.Observed), fmtBytes(d.Expected.Low)+" – "+fmtBytes(d.Expected.High)
		}
		v.Detections = append(v.Detections, row)
	}
	v.Chart, v.ChartNote = c.chart(in)
	v.Restorable = c.cfg.Killer != nil && (in.Restore == nil || !in.Restore.Complete) &&
		slices.ContainsFunc(in.Actions, func(a incidents.ActionRef) bool {
			return a.Type.Destructive() && (a.Status == incidents.ActionVerified || a.Status == incidents.ActionApplied || a.Status == incidents.ActionUnverified)
		})
	if p, err := c.cfg.Controller.Pending(ctx); err == nil {
		for _, a := range append(p.Approvals, p.VetoWindows...) {
			if a.Incident == in.ID {
				v.Pending = append(v.Pending, a)
			}
		}
	}
	recs := c.trails.of(in.ID)
	slices.SortStableFunc(recs, func(a, b ledger.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, rec := range recs {
		v.Trail = append(v.Trail, trailRow{At: rec.Time, Seq: rec.Seq, What: string(rec.Type), Detail: replay.LedgerSummary(rec)})
		if g, ok := guardOutcome(rec); ok {
			v.Guards = append(v.Guards, g)
		}
	}
	if len(recs) == 0 {
		v.TrailNote = "No ledger record of this incident since the console started (`killswitch ledger` reads the whole chain)."
	}
	return v
}

// guardOutcome reads an action record that a guard decided (held, skipped, throttled,
// passed in another mode): who decided and why.
func guardOutcome(rec ledger.Record) (guardRow, bool) {
	if rec.Type != ledger.TypeAction {
		return guardRow{}, false
	}
	var ev struct {
		Action string `json:"action"`
		Type   string `json:"type"`
		Target string `json:"target"`
		Stage  string `json:"stage"`
		Status string `json:"status"`
		Guard  string `json:"guard"`
		Reason string `json:"reason"`
		Mode   string `json:"mode"`
	}
	if json.Unmarshal(rec.Payload, &ev) != nil || ev.Guard == "" {
		return guardRow{}, false
	}
	return guardRow{At: rec.Time, Action: ev.Action, Type: ev.Type, Target: ev.Target, Stage: ev.Stage, Guard: ev.Guard,
		Status: ev.Status, Reason: ev.Reason}, true
}

// chart draws the incident's key volume against the band its detections reported, at
// the detections' interval, from a day before the first anomalous event (as far as the
// console has seen) to now or the incident's close.
func (c *Console) chart(in *incidents.Incident) (template.HTML, string) {
	width, bands := c.cfg.Bucket, bandsOf(in)
	if len(bands) > 0 && bands[0].per%c.cfg.Bucket == 0 && bands[0].per <= c.cfg.History {
		width = bands[0].per
	}
	from := in.FirstAnomalousAt.Add(-c.cfg.History)
	to := c.cfg.Clock.Now()
	if in.ClosedAt != nil && in.ClosedAt.Before(to) {
		to = in.ClosedAt.Add(width)
	}
	raw := c.volumes.series(in.Key(), from, to)
	if len(raw) == 0 {
		return "", "No volume seen for " + in.Key().String() + " since the console started."
	}
	var pts []replay.ChartPoint
	for _, b := range raw {
		start := b.Start.Truncate(width)
		if n := len(pts); n > 0 && pts[n-1].Start.Equal(start) {
			pts[n-1].Bytes += b.Bytes
			continue
		}
		p := replay.ChartPoint{Start: start, Bytes: b.Bytes, High: math.Inf(1)}
		if bd, ok := bandAt(bands, start.Add(width), width); ok {
			p.Expected, p.High = bd.Low, bd.High
		}
		pts = append(pts, p)
	}
	containment := "verified revocation"
	return replay.Chart(in, width, pts, containment), ""
}

// band is the expected band a bytes detection reported, per its interval.
type band struct {
	detectors.Band
	per time.Duration
	at  time.Time
}

// bandsOf returns the bands of the incident's byte-volume detections, in detection order.
func bandsOf(in *incidents.Incident) []band {
	var out []band
	for _, d := range in.Detections {
		unit, ok := strings.CutPrefix(d.Unit, "bytes/")
		if !ok || math.IsInf(d.Expected.High, 0) || d.Expected.High <= 0 {
			continue
		}
		per, err := time.ParseDuration(unit)
		if err != nil || per <= 0 {
			continue
		}
		out = append(out, band{Band: d.Expected, per: per, at: d.DetectedAt})
	}
	slices.SortStableFunc(out, func(a, b band) int { return a.at.Compare(b.at) })
	return out
}

// bandAt is the band in force at the end of a bucket: the latest detection's before it,
// else the first one's; only a band measured over the chart's own width is drawn.
func bandAt(bands []band, end time.Time, width time.Duration) (detectors.Band, bool) {
	var pick *band
	for i := range bands {
		if bands[i].per != width {
			continue
		}
		if pick == nil || !bands[i].at.After(end) {
			pick = &bands[i]
		}
	}
	if pick == nil {
		return detectors.Band{}, false
	}
	return pick.Band, true
}

// approvalsView lists what waits on people.
type approvalsView struct {
	Pending httpapi.Pending
}

func (c *Console) approvalsPage(w http.ResponseWriter, r *http.Request) {
	p, err := c.cfg.Controller.Pending(r.Context())
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "approvals", approvalsView{Pending: p})
}

func (c *Console) statusPage(w http.ResponseWriter, r *http.Request) {
	st, err := c.cfg.Controller.Status(r.Context())
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "status", st)
}

// decide approves, rejects or vetoes the action of the path as the logged-in user.
func (c *Console) decide(f func(ctx context.Context, id, who, comment string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u := whoFrom(r.Context()).user
		if err := f(r.Context(), r.PathValue("id"), u.Name, limit(r.PostFormValue("comment"), 500)); err != nil {
			c.fail(w, r, err)
			return
		}
		c.done(w, r, "done")
	}
}

func (c *Console) pause(w http.ResponseWriter, r *http.Request) {
	u := whoFrom(r.Context()).user
	reason := limit(r.PostFormValue("reason"), 500)
	if reason == "" {
		reason = "paused from the console"
	}
	if err := c.cfg.Controller.Pause(r.Context(), u.Name, reason); err != nil {
		c.fail(w, r, err)
		return
	}
	c.done(w, r, "paused")
}

func (c *Console) control(f func(ctx context.Context, who string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := f(r.Context(), whoFrom(r.Context()).user.Name); err != nil {
			c.fail(w, r, err)
			return
		}
		c.done(w, r, "done")
	}
}

// done answers a successful request: a script gets a short text, a form goes back to
// the page it came from.
func (c *Console) done(w http.ResponseWriter, r *http.Request, msg string) {
	if r.Header.Get(CSRFHeader) != "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = fmt.Fprintln(w, msg)
		return
	}
	http.Redirect(w, r, safeNext(r.PostFormValue("back")), http.StatusSeeOther)
}

func limit(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = s[:n]
	}
	return s
}

func subject(vendor, cred string) string {
	if cred == "" {
		return vendor + " (all credentials)"
	}
	return vendor + " / " + cred
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func stateCSS(s string) string {
	switch s {
	case "contained", "verified", "closed", "ok", "applied":
		return "ok"
	case "open", "held", "pending", "announced", "veto_window", "degraded", "unverified":
		return "warn"
	case "failed", "rejected", "expired":
		return "bad"
	}
	return ""
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func derefFloat(f *float64) float64 {
	if f == nil {
		return math.NaN()
	}
	return *f
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("Jan 2 15:04:05.000")
}

func fmtSeconds(sec float64) string {
	if math.IsNaN(sec) {
		return "—"
	}
	return replay.FormatSeconds(sec)
}

func fmtBytes(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return "∞"
	}
	return replay.FormatBytes(v)
}

func fmtNum(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return "∞"
	}
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
