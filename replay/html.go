package replay

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
)

// WriteHTML writes the report as one self-contained HTML page: inline CSS and SVG, no
// script, nothing fetched from the network. The same report always gives the same bytes.
func (r *Report) WriteHTML(w io.Writer) error {
	if err := pageTemplate.Execute(w, r.view()); err != nil {
		return fmt.Errorf("replay: write HTML report: %w", err)
	}
	return nil
}

type pageView struct {
	Events           string
	From, To         string
	Summary          Summary
	Median, Worst    string
	Stopped, Exposed string
	AfterRevocation  string
	Incidents        []incidentView
	Flips            []Flip
	HasBaseline      bool
	// Containment names what ends an exposure window: a verified revocation, or a
	// planned one when the replay applied nothing.
	Containment string
	// Unmapped lists the unmapped credentials the plan revokes (vendor/credential).
	Unmapped []string
	// FleetShifts lists the fleet-wide shifts observed.
	FleetShifts []FleetShift
}

type incidentView struct {
	Incident
	Anchor    string
	Subject   string
	Exposure  string
	Before    string
	After     string
	Status    string
	StatusCSS string
	// UAR summarises the use_after_revocation detections ("" when none).
	UAR       string
	Chart     template.HTML
	Decisions []incidents.DecisionRef
	Trail     []trailRow
}

// untilOf returns *s, or "" for nil.
func untilOf(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

type trailRow struct {
	At, What, Detail string
}

func (r *Report) view() pageView {
	v := pageView{
		Events: commas(r.Events), From: short(r.FirstEvent), To: short(r.LastEvent), Summary: r.Summary,
		Median: "—", Worst: "—", Stopped: bytesHuman(float64(r.Summary.BytesStopped)),
		Exposed: bytesHuman(float64(r.Summary.BytesExposed)), Flips: r.Flips, HasBaseline: r.Flips != nil,
		AfterRevocation: bytesHuman(float64(r.Summary.BytesAfterRevocation)),
		Containment:     "verified revocation", Unmapped: r.unmapped, FleetShifts: r.FleetShifts,
	}
	if r.planned {
		v.Containment = "planned revocation"
	}
	if r.Summary.MedianExposureSeconds != nil {
		v.Median, v.Worst = duration(*r.Summary.MedianExposureSeconds), duration(*r.Summary.WorstExposureSeconds)
	}
	for i, in := range r.Incidents {
		iv := incidentView{
			Incident: in, Anchor: fmt.Sprintf("i%d", i+1), Subject: subject(in.Vendor, in.Credential),
			Exposure: "not contained", Before: bytesHuman(float64(in.BytesBeforeContainment)),
			After: bytesHuman(float64(in.BytesAfterContainment)), Status: "open", StatusCSS: "open",
		}
		if in.ExposureWindowSeconds != nil {
			iv.Exposure, iv.Status, iv.StatusCSS = duration(*in.ExposureWindowSeconds), "contained", "ok"
		} else if len(in.Actions) > 0 {
			iv.Status = in.Actions[len(in.Actions)-1].Status
		}
		if u := in.UseAfterRevocation; u != nil {
			iv.UAR = fmt.Sprintf("%d detection(s), %s, %s → %s", u.Detections, bytesHuman(float64(u.Bytes)), short(u.FirstAt), short(u.LastAt))
		}
		if i < len(r.details) {
			d := r.details[i]
			iv.Decisions = d.incident.Decisions
			iv.Chart = chart(d.incident, d.series, v.Containment)
			iv.Trail = trail(d.incident, r.records)
		}
		v.Incidents = append(v.Incidents, iv)
	}
	return v
}

// trail lists the incident's ledger records in order: what happened, step by step.
func trail(in *incidents.Incident, records []ledger.Record) []trailRow {
	var rows []trailRow
	for _, rec := range records {
		if rec.Incident != in.ID {
			continue
		}
		rows = append(rows, trailRow{At: rec.Time.UTC().Format("15:04:05.000"), What: string(rec.Type), Detail: payloadSummary(rec)})
	}
	return rows
}

// payloadSummary picks the fields worth reading from a ledger payload.
func payloadSummary(rec ledger.Record) string {
	var m map[string]any
	if err := json.Unmarshal(rec.Payload, &m); err != nil {
		return string(rec.Payload)
	}
	var parts []string
	for _, k := range []string{"escalation", "state", "type", "credential", "target", "stage", "status", "outcome", "guard", "mode", "reason", "error", "detail"} {
		if val, ok := m[k]; ok && val != "" && val != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", k, val))
		}
	}
	if dec, ok := m["decision"].(map[string]any); ok {
		if reason, ok := dec["reason"].(string); ok && reason != "" {
			parts = append(parts, "reason: "+reason)
		}
		if acts, ok := dec["actions"].([]any); ok {
			parts = append(parts, fmt.Sprintf("%d action(s)", len(acts)))
		}
	}
	if pb, ok := m["matched"].([]any); ok && len(pb) > 0 {
		parts = append(parts, fmt.Sprintf("playbooks: %v", pb))
	}
	if len(parts) == 0 {
		return rec.ID
	}
	return strings.Join(parts, " · ")
}

// chart draws the incident's volume per bucket against the expected band, with the
// milestones and the exposure window shaded.
func chart(in *incidents.Incident, s *series, containment string) template.HTML {
	const W, H, left, right, top, bottom = 960.0, 260.0, 70.0, 20.0, 24.0, 40.0
	if s == nil || len(s.points) == 0 {
		return template.HTML(`<p class="muted">No volume history kept for this key (more keys than --chart-keys).</p>`)
	}
	width := s.width
	t0 := time.Unix(0, s.points[0].bucket*int64(width)).UTC()
	t1 := time.Unix(0, (s.points[len(s.points)-1].bucket+1)*int64(width)).UTC()
	marks := []time.Time{in.FirstAnomalousAt, in.DetectedAt}
	if in.ContainedAt != nil {
		marks = append(marks, *in.ContainedAt)
	}
	for _, m := range marks {
		if m.Before(t0) {
			t0 = m.Add(-width)
		}
		if m.After(t1) {
			t1 = m.Add(width)
		}
	}
	span := t1.Sub(t0).Seconds()
	x := func(t time.Time) float64 { return left + (W-left-right)*t.Sub(t0).Seconds()/span }
	// The scale follows the observed volume; a detection line far above it is clipped.
	ymax := 1.0
	for _, p := range s.points {
		ymax = math.Max(ymax, float64(p.bytes))
	}
	ymax *= 1.15
	y := func(v float64) float64 { return top + (H-top-bottom)*(1-math.Min(v, ymax)/ymax) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %.0f %.0f" role="img" aria-label="volume of %s">`, W, H, template.HTMLEscapeString(in.Key().String()))
	// axes and grid
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, left, y(v), W-right, y(v))
		fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="%.1f" text-anchor="end">%s</text>`, left-6, y(v)+4, bytesHuman(v))
	}
	step := niceStep(t1.Sub(t0))
	for t := t0.Truncate(step).Add(step); t.Before(t1); t = t.Add(step) {
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, x(t), top, x(t), H-bottom)
		fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x(t), H-bottom+16, t.Format("Jan 2 15:04"))
	}
	// expected band: from the baseline to the detection line
	var band, base strings.Builder
	var lows []string
	for _, p := range s.points {
		if math.IsInf(float64(p.high), 1) {
			continue
		}
		ts := time.Unix(0, p.bucket*int64(width))
		xa, xb := x(ts), x(ts.Add(width))
		fmt.Fprintf(&band, "%.1f,%.1f %.1f,%.1f ", xa, y(float64(p.high)), xb, y(float64(p.high)))
		lows = append([]string{fmt.Sprintf("%.1f,%.1f %.1f,%.1f", xb, y(float64(p.expected)), xa, y(float64(p.expected)))}, lows...)
		fmt.Fprintf(&base, "%.1f,%.1f %.1f,%.1f ", xa, y(float64(p.expected)), xb, y(float64(p.expected)))
	}
	if band.Len() > 0 {
		fmt.Fprintf(&b, `<polygon class="band" points="%s%s"/>`, band.String(), strings.Join(lows, " "))
		fmt.Fprintf(&b, `<polyline class="baseline" points="%s"/>`, strings.TrimSpace(base.String()))
	}
	// observed volume per bucket
	for _, p := range s.points {
		ts := time.Unix(0, p.bucket*int64(width))
		xa, xb := x(ts), x(ts.Add(width))
		cls := "vol"
		if !math.IsInf(float64(p.high), 1) && float64(p.bytes) >= float64(p.high) {
			cls = "vol hot"
		}
		fmt.Fprintf(&b, `<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>`,
			cls, xa+0.5, y(float64(p.bytes)), math.Max(xb-xa-1, 0.5), H-bottom-y(float64(p.bytes)))
	}
	// exposure window: first anomalous event to containment (or to the end of the chart)
	end := t1
	if in.ContainedAt != nil {
		end = *in.ContainedAt
	}
	xa, xb := x(in.FirstAnomalousAt), x(end)
	fmt.Fprintf(&b, `<rect class="exposure" x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>`, xa, top, math.Max(xb-xa, 2), H-top-bottom)
	mark := func(t time.Time, cls, label string, row int) {
		fmt.Fprintf(&b, `<line class="mark %s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, cls, x(t), top, x(t), H-bottom)
		fmt.Fprintf(&b, `<text class="mlabel %s" x="%.1f" y="%.1f">%s</text>`, cls, x(t)+4, top+12+13*float64(row), label)
	}
	mark(in.FirstAnomalousAt, "first", "first anomalous event", 0)
	mark(in.DetectedAt, "detect", "detection", 1)
	if in.DecidedAt != nil {
		mark(*in.DecidedAt, "decide", "decision", 2)
	}
	if in.ContainedAt != nil {
		mark(*in.ContainedAt, "contain", containment+" · exposure "+duration(*in.ExposureWindowSeconds), 3)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func niceStep(d time.Duration) time.Duration {
	for _, s := range []time.Duration{15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if d/s <= 8 {
			return s
		}
	}
	return 48 * time.Hour
}

func subject(vendor, cred string) string {
	if cred == "" {
		return vendor + " (all credentials)"
	}
	return vendor + " / " + cred
}

func short(ts string) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return ts
	}
	return t.Format("2006-01-02 15:04:05 UTC")
}

func duration(sec float64) string {
	switch {
	case sec < 1:
		return fmt.Sprintf("%.0f ms", sec*1000)
	case sec < 120:
		return fmt.Sprintf("%.1f s", sec)
	case sec < 7200:
		return fmt.Sprintf("%.1f min", sec/60)
	}
	return fmt.Sprintf("%.1f h", sec/3600)
}

func bytesHuman(v float64) string {
	units := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	i := 0
	for v >= 1000 && i < len(units)-1 {
		v /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", v)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{"short": short, "until": untilOf}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Killswitch tabletop replay</title>
<style>
:root{--ink:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--red:#d92d20;--amber:#f79009;--green:#079455;--violet:#7a5af8;--blue:#2e90fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1040px;margin:0 auto;padding:32px 24px 64px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:40px 0 12px} h3{font-size:16px;margin:0}
.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:12px;margin:20px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card .v{font-size:26px;font-weight:650;letter-spacing:-.02em} .card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.hl{border-color:#fecdca;background:#fffbfa} .card.hl .v{color:var(--red)}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:10px;overflow:hidden}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.03em;background:#fcfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pill{display:inline-block;border-radius:999px;padding:1px 8px;font-size:12px;font-weight:600;background:#f2f4f7}
.pill.ok{background:#dcfae6;color:#067647} .pill.uar{background:#fee4e2;color:#b42318} .pill.open,.pill.held,.pill.failed{background:#fef0c7;color:#b54708}
.incident{background:#fff;border:1px solid var(--line);border-radius:12px;padding:18px 20px;margin:18px 0}
.incident header{display:flex;justify-content:space-between;align-items:baseline;gap:12px;margin-bottom:8px}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:6px 0 10px;color:var(--muted)} .facts b{color:var(--ink);font-weight:600}
svg{width:100%;height:auto;display:block;margin:6px 0 4px}
.grid{stroke:#eef0f3;stroke-width:1} .axis{font-size:11px;fill:var(--muted)}
.band{fill:#d1e9ff;opacity:.7} .baseline{fill:none;stroke:var(--blue);stroke-width:1.2;stroke-dasharray:4 3}
.vol{fill:#98a2b3} .vol.hot{fill:var(--red)}
.exposure{fill:var(--red);opacity:.12}
.mark{stroke-width:1.6} .mlabel{font-size:11px;font-weight:600}
.first{stroke:var(--amber);fill:var(--amber)} .detect{stroke:var(--red);fill:var(--red)} .decide{stroke:var(--violet);fill:var(--violet)} .contain{stroke:var(--green);fill:var(--green)}
.legend{display:flex;gap:16px;flex-wrap:wrap;font-size:12px;color:var(--muted);margin-bottom:4px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.trail td{font-size:13px} .trail td:first-child{white-space:nowrap;font-variant-numeric:tabular-nums;color:var(--muted)}
footer{margin-top:40px;color:var(--muted);font-size:12px}
</style>
</head>
<body><main>
<h1>Tabletop replay: what Killswitch would have done</h1>
<p class="muted">{{.Events}} events of recorded telemetry, {{.From}} to {{.To}}. All times are event times.</p>
<div class="cards">
<div class="card"><div class="k">Incidents</div><div class="v">{{.Summary.Incidents}}</div><div class="muted">{{.Summary.Contained}} contained</div></div>
<div class="card"><div class="k">Median exposure window</div><div class="v">{{.Median}}</div><div class="muted">first anomalous byte → {{.Containment}}</div></div>
<div class="card"><div class="k">Worst exposure window</div><div class="v">{{.Worst}}</div><div class="muted">of the contained incidents</div></div>
<div class="card hl"><div class="k">Data that would have been stopped</div><div class="v">{{.Stopped}}</div><div class="muted">sent by the same credentials after containment</div></div>
<div class="card"><div class="k">Data exposed before containment</div><div class="v">{{.Exposed}}</div><div class="muted">from the first anomalous event on</div></div>
{{if .Summary.UseAfterRevocation}}<div class="card"><div class="k">Use after revocation</div><div class="v">{{.Summary.UseAfterRevocation}}</div><div class="muted">incident(s) whose revoked credentials moved data after containment ({{.AfterRevocation}}): against a real revocation, a copy of the secret or a path that does not depend on Vault</div></div>
{{end}}<div class="card"><div class="k">Events replayed</div><div class="v">{{.Events}}</div><div class="muted">through detectors, playbooks and guard rails</div></div>{{if .Unmapped}}
<div class="card"><div class="k">Unmapped credentials</div><div class="v">{{.Summary.UnmappedCredentials}}</div><div class="muted">not in the inventory, targeted in the plan only; {{.Summary.ContainedUnmapped}} incident(s) contained through them</div></div>{{end}}
</div>{{if .Unmapped}}
<p class="muted">Unmapped: these credentials were seen in the telemetry but are not in the inventory. The plan treats each as a Vault token so the playbooks decide what they would do; add them to the inventory to revoke them for real: {{range $i, $c := .Unmapped}}{{if $i}}, {{end}}{{$c}}{{end}}.</p>{{end}}{{if .FleetShifts}}
<h2>Fleet-wide shifts ({{len .FleetShifts}})</h2>
<p class="muted">Most vendors moved together: the environment (a Monday, an outage ending, a network change), one observation rather than one incident per vendor. While a rise lasts, spike and sustained judge each vendor net of the common factor (never beyond the median vendor's move, nor above 4× the most a key has ever sent in one bucket); caps, new destinations and dormant credentials are never discounted.</p>
<table>
<thead><tr><th>From</th><th>Until</th><th class="num">Vendors moved</th><th class="num">Factor</th><th>Volume detectors</th></tr></thead>
<tbody>
{{range .FleetShifts}}<tr><td>{{short .At}}</td><td>{{if .Until}}{{short (until .Until)}}{{else}}end of replay{{end}}</td><td class="num">{{.VendorsMoved}} of {{.VendorsTotal}}</td><td class="num">×{{.Factor}}</td><td>{{if .Discounted}}discounted{{else}}not discounted (a dip){{end}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Incidents}}
<table>
<thead><tr><th>#</th><th>Vendor / credential</th><th>Detectors</th><th>Detected</th><th>Exposure window</th><th class="num">Before</th><th class="num">Stopped</th><th>Status</th></tr></thead>
<tbody>
{{range .Incidents}}<tr><td><a href="#{{.Anchor}}">{{.Anchor}}</a></td><td>{{.Subject}}</td><td>{{range $i, $d := .Detectors}}{{if $i}}, {{end}}{{$d}}{{end}}</td><td>{{short .DetectedAt}}</td><td>{{.Exposure}}</td><td class="num">{{.Before}}</td><td class="num">{{.After}}</td><td><span class="pill {{.StatusCSS}}">{{.Status}}</span>{{if .UAR}} <span class="pill uar" title="{{.UAR}}">use after revocation</span>{{end}}</td></tr>
{{end}}</tbody></table>
{{else}}<p>No incident: nothing in this telemetry crossed a detector's line.</p>{{end}}

{{if .HasBaseline}}
<h2>Decisions that change with the new playbooks</h2>
{{if .Flips}}<table><thead><tr><th>When</th><th>Vendor / credential</th><th>Detector</th><th>Before</th><th>After</th></tr></thead><tbody>
{{range .Flips}}<tr><td>{{short .At}}</td><td>{{.Vendor}}{{if .Credential}} / {{.Credential}}{{end}}</td><td>{{.Detector}}</td><td>{{.Baseline}}</td><td>{{.Candidate}}</td></tr>
{{end}}</tbody></table>{{else}}<p>No decision differs between the two playbook sets on this telemetry.</p>{{end}}
{{end}}

{{range .Incidents}}
<section class="incident" id="{{.Anchor}}">
<header><h3>{{.Anchor}} · {{.Subject}}</h3><span class="pill {{.StatusCSS}}">{{.Status}}</span>{{if .UAR}} <span class="pill uar">use after revocation</span>{{end}}</header>
<div class="facts"><span>first anomalous <b>{{short .FirstAnomalousAt}}</b></span><span>detected <b>{{short .DetectedAt}}</b></span><span>exposure window <b>{{.Exposure}}</b></span><span>exposed <b>{{.Before}}</b></span><span>stopped <b>{{.After}}</b></span>{{if .UAR}}<span>use after revocation <b>{{.UAR}}</b></span>{{end}}</div>
<div class="legend"><span><i class="sw" style="background:#98a2b3"></i>volume per interval</span><span><i class="sw" style="background:#d92d20"></i>above the detection line</span><span><i class="sw" style="background:#d1e9ff"></i>expected band (baseline to detection line)</span><span><i class="sw" style="background:rgba(217,45,32,.25)"></i>exposure window</span></div>
{{.Chart}}
{{if .Decisions}}<table class="trail"><thead><tr><th>Decision</th><th>Playbooks</th><th>Reason</th></tr></thead><tbody>
{{range .Decisions}}<tr><td>{{.At.Format "15:04:05.000"}}</td><td>{{range $i, $p := .Playbooks}}{{if $i}}, {{end}}{{$p}}{{end}}{{if .Escalated}} <span class="pill open">escalated</span>{{end}}</td><td>{{.Reason}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Actions}}<table class="trail" style="margin-top:10px"><thead><tr><th>Action</th><th>Target</th><th>Status</th></tr></thead><tbody>
{{range .Actions}}<tr><td>{{.Type}}</td><td>{{.Target}}</td><td><span class="pill">{{.Status}}</span>{{if .Unmapped}} <span class="pill open">unmapped</span>{{end}} {{short .At}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Trail}}<details><summary class="muted">Decision trail: every ledger record of this incident</summary><table class="trail"><tbody>
{{range .Trail}}<tr><td>{{.At}}</td><td>{{.What}}</td><td>{{.Detail}}</td></tr>
{{end}}</tbody></table></details>{{end}}
</section>
{{end}}
<footer>Generated by killswitch replay. The same telemetry, configuration and playbooks always give this same report.</footer>
</main></body></html>
`))
