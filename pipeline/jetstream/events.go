package jetstream

import (
	"context"
	"encoding/json"
	"time"

	actnats "github.com/killswitch-dev/killswitch/actions/nats"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/nats-io/nats.go"
)

// NATSEvents publishes what happens on killswitch.events.<kind>.<vendor> (core NATS,
// at most once: the ledger is the durable record), and each detection also as an OCSF
// Detection Finding on killswitch.ocsf.detection_finding.<vendor>.
type NATSEvents struct {
	NC *nats.Conn
}

// Emit implements pipeline.EventSink.
func (e NATSEvents) Emit(_ context.Context, kind, vendor string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tok := actnats.SubjectToken(vendor)
	if err := e.NC.Publish("killswitch.events."+kind+"."+tok, b); err != nil {
		return err
	}
	if d, ok := v.(detectors.Detection); ok {
		f, err := json.Marshal(OCSFDetectionFinding(d))
		if err != nil {
			return err
		}
		return e.NC.Publish("killswitch.ocsf.detection_finding."+tok, f)
	}
	return nil
}

// OCSFDetectionFinding renders a detection as an OCSF 1.3 Detection Finding (class 2004).
func OCSFDetectionFinding(d detectors.Detection) map[string]any {
	sev := map[detectors.Severity]int{
		detectors.SeverityInfo: 1, detectors.SeverityLow: 2, detectors.SeverityMedium: 3,
		detectors.SeverityHigh: 4, detectors.SeverityCritical: 5,
	}[d.Severity]
	obs := []map[string]any{
		{"name": "vendor", "type_id": 0, "value": d.Vendor},
	}
	if d.Credential != "" {
		obs = append(obs, map[string]any{"name": "credential", "type_id": 0, "value": d.Credential})
	}
	if d.Destination != "" {
		obs = append(obs, map[string]any{"name": "destination", "type_id": 2, "value": d.Destination})
	}
	return map[string]any{
		"class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
		"activity_id": 1, "activity_name": "Create", "type_uid": 200401,
		"time":        d.DetectedAt.UnixMilli(),
		"severity_id": sev, "severity": string(d.Severity),
		"status_id": 1, "status": "New",
		"message": d.Reason,
		"metadata": map[string]any{
			"version": "1.3.0", "uid": d.ID,
			"product": map[string]any{"name": "Killswitch", "vendor_name": "Killswitch"},
		},
		"finding_info": map[string]any{
			"uid": d.ID, "title": string(d.Detector) + " on " + d.Key.String(), "desc": d.Reason,
			"analytic":        map[string]any{"name": string(d.Detector), "type_id": 1, "type": "Rule"},
			"first_seen_time": d.FirstAnomalousAt.UnixMilli(), "last_seen_time": d.DetectedAt.UnixMilli(),
		},
		"evidences": []map[string]any{{"data": map[string]any{
			"observed": d.Observed, "expected_low": d.Expected.Low, "expected_high": d.Expected.High,
			"unit": d.Unit, "score": d.Score, "anomalous_bytes": d.AnomalousBytes,
			"window_start": d.Window.Start.Format(time.RFC3339Nano), "window_end": d.Window.End.Format(time.RFC3339Nano),
		}}},
		"observables": obs,
	}
}
