// Package metrics defines the Prometheus metrics of the service: what flowed through
// each stage, by outcome, and the latency histograms of detection, decision, revocation
// and the exposure window.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds every metric, registered on its own registry (never the global one).
type Metrics struct {
	// Registry is what /metrics serves.
	Registry *prometheus.Registry

	// Events counts telemetry events processed.
	Events prometheus.Counter
	// DeadLetters counts malformed telemetry messages by reason.
	DeadLetters *prometheus.CounterVec
	// Detections counts detections by detector kind and severity.
	Detections *prometheus.CounterVec
	// Incidents counts incidents opened.
	Incidents prometheus.Counter
	// Decisions counts decisions by outcome (act, no_action, escalated).
	Decisions *prometheus.CounterVec
	// Actions counts action outcomes by type and status.
	Actions *prometheus.CounterVec
	// DetectionLatency observes event receipt → detection handed on, in seconds.
	DetectionLatency prometheus.Histogram
	// DecisionLatency observes playbook evaluation time, in seconds.
	DecisionLatency prometheus.Histogram
	// RevocationLatency observes decision → verified revocation, in seconds.
	RevocationLatency prometheus.Histogram
	// ExposureWindow observes first anomalous event → verified revocation, in seconds.
	ExposureWindow prometheus.Histogram
	// Kills counts kill-vendor runs by the state they ended in (done, incomplete).
	Kills *prometheus.CounterVec
	// TimeToRestore observes containment → restore verified after a false positive, in seconds.
	TimeToRestore prometheus.Histogram
	// Paused is 1 while automation is paused.
	Paused prometheus.Gauge
	// EventsDropped counts events for other automation that could not be published, by kind.
	EventsDropped *prometheus.CounterVec
	// RespondFailures counts detections whose handling failed, by outcome (retried,
	// paged, page_failed, undecodable, vendor_backlog).
	RespondFailures *prometheus.CounterVec
	// TickFailures counts processing-time checks that failed, by stage.
	TickFailures prometheus.Counter
	// LedgerBreaks counts stored ledger messages (and checkpoints) found not to be valid
	// records: garbage, forgeries, a cut-off or rewritten chain.
	LedgerBreaks *prometheus.CounterVec
	// UseAfterRevocation counts use_after_revocation detections: a credential whose
	// revocation was verified (or any credential of a vendor cut off as a whole) moved
	// data again. UseAfterRevocationBytes counts the bytes they reported.
	UseAfterRevocation      prometheus.Counter
	UseAfterRevocationBytes prometheus.Counter
}

// New creates the metrics on a fresh registry, with the Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	// Sub-millisecond to minutes: revocations take milliseconds, exposure windows can take hours.
	fast := prometheus.ExponentialBuckets(0.0001, 2.5, 14)
	slow := []float64{0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600}
	m := &Metrics{
		Registry: r,
		Events:   prometheus.NewCounter(prometheus.CounterOpts{Name: "killswitch_events_total", Help: "Telemetry events processed."}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_dead_letters_total",
			Help: "Malformed telemetry messages sent to the dead-letter subject, by reason."}, []string{"reason"}),
		Detections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_detections_total",
			Help: "Detections by detector kind and severity."}, []string{"detector", "severity"}),
		Incidents: prometheus.NewCounter(prometheus.CounterOpts{Name: "killswitch_incidents_total", Help: "Incidents opened."}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_decisions_total",
			Help: "Playbook decisions by outcome (act, no_action, escalated)."}, []string{"outcome"}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_actions_total",
			Help: "Action outcomes by type and status."}, []string{"type", "status"}),
		DetectionLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "killswitch_detection_latency_seconds",
			Help: "Telemetry event received to detection handed on.", Buckets: fast}),
		DecisionLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "killswitch_decision_latency_seconds",
			Help: "Playbook evaluation time.", Buckets: fast}),
		RevocationLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "killswitch_revocation_latency_seconds",
			Help: "Decision to verified revocation.", Buckets: fast}),
		ExposureWindow: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "killswitch_exposure_window_seconds",
			Help: "First anomalous event to verified revocation.", Buckets: slow}),
		Kills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_kills_total",
			Help: "kill-vendor runs, by the state they ended in (done, incomplete)."}, []string{"state"}),
		TimeToRestore: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "killswitch_time_to_restore_seconds",
			Help: "Containment to verified restore of an incident restored as a false positive.", Buckets: slow}),
		Paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "killswitch_paused", Help: "1 while automation is paused."}),
		EventsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_events_dropped_total",
			Help: "Events for other automation (killswitch.events.>) that could not be published, by kind."}, []string{"kind"}),
		RespondFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_respond_failures_total",
			Help: "Detections whose handling failed, by outcome (retried, paged, page_failed, undecodable, vendor_backlog)."}, []string{"outcome"}),
		TickFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "killswitch_tick_failures_total",
			Help: "Processing-time checks (silence, incident and approval expiry) that failed."}),
		LedgerBreaks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "killswitch_ledger_breaks_total",
			Help: "Stored ledger messages or checkpoints that are not valid, by kind (undecodable, hash, mac, no_mac, link, truncated, rewritten, bad_checkpoint)."}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.Events, m.DeadLetters, m.Detections, m.Incidents, m.Decisions,
		m.Actions, m.DetectionLatency, m.DecisionLatency, m.RevocationLatency, m.ExposureWindow, m.Kills, m.TimeToRestore, m.Paused,
		m.EventsDropped, m.RespondFailures, m.TickFailures, m.LedgerBreaks} {
		f(c)
	}
	m.UseAfterRevocation = prometheus.NewCounter(prometheus.CounterOpts{Name: "killswitch_use_after_revocation_total",
		Help: "Detections of data moved on a credential after its revocation was verified (the egress path does not depend on Vault, or a copy of the secret exists)."})
	m.UseAfterRevocationBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "killswitch_use_after_revocation_bytes_total",
		Help: "Bytes moved on credentials after their revocation was verified, as reported by use_after_revocation detections."})
	f(m.UseAfterRevocation)
	f(m.UseAfterRevocationBytes)
	return m
}

// WatchLedger registers killswitch_ledger_integrity: 1 while intact reports true (every
// break of the ledger is sealed), 0 while it is degraded; and
// killswitch_ledger_appends_failing: 1 while failing reports true (the latest entry this
// instance tried to store failed), 0 otherwise.
func (m *Metrics) WatchLedger(intact, failing func() bool) {
	gauge := func(name, help string, f func() bool) {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 {
				if f() {
					return 1
				}
				return 0
			}))
	}
	gauge("killswitch_ledger_integrity", "1 while the ledger chain is intact (every break sealed), 0 while degraded (see /api/status).", intact)
	gauge("killswitch_ledger_appends_failing", "1 while the latest entry this instance tried to append to the ledger failed (see /api/status), 0 otherwise.", failing)
}

// VaultTokenBroad registers killswitch_vault_token_broad: 1 when the service runs on a
// root Vault token or one that can do more than the inventory's policy (allowed by
// --allow-broad-vault-token), 0 otherwise.
func (m *Metrics) VaultTokenBroad(broad bool) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "killswitch_vault_token_broad",
		Help: "1 while the Vault token can do more than the inventory's policy (allowed by --allow-broad-vault-token), 0 when it is scoped."})
	if broad {
		g.Set(1)
	}
	m.Registry.MustRegister(g)
}

// WatchDetectors registers killswitch_detector_refused_events_total{reason}: the events
// the detectors did not learn from as they came, by reason, each read through its
// function at scrape time (late: counted in the current bucket; clock_jump: refused by
// the clock guard; invalid; key_bound: no room for a new key).
func (m *Metrics) WatchDetectors(reasons map[string]func() uint64) {
	for reason, read := range reasons {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "killswitch_detector_refused_events_total",
			Help:        "Events the detectors did not learn from as they came, by reason (late, clock_jump, invalid, key_bound).",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(read()) }))
	}
}

// WatchFleet registers the detectors' fleet-wide shifts, read through read at scrape
// time: killswitch_fleet_shifts_total, the shifts observed (most vendors moving
// together: one observation, not one incident per vendor), and
// killswitch_fleet_shift_factor, the common factor of the shift on now (1 when none).
func (m *Metrics) WatchFleet(read func() (shifts uint64, factor float64)) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "killswitch_fleet_shifts_total",
		Help: "Fleet-wide shifts observed: most vendors moving together (a Monday, an outage ending, a network change), one observation instead of one incident per vendor."},
		func() float64 { n, _ := read(); return float64(n) }))
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "killswitch_fleet_shift_factor",
		Help: "The common factor of the fleet-wide shift on now (the median vendor's volume over its expected volume); 1 when none."},
		func() float64 { _, f := read(); return f }))
}
