package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/httpapi"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// IncidentsBucket is the KV bucket holding incidents, keyed by incident ID.
const IncidentsBucket = "killswitch_incidents"

// KVIncidents stores incidents in JetStream KV: the HTTP API reads them and a restarted
// service restores the open ones.
type KVIncidents struct {
	kv jetstream.KeyValue
}

// NewKVIncidents creates (or opens) the incidents bucket.
func NewKVIncidents(ctx context.Context, js jetstream.JetStream, replicas int) (*KVIncidents, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: IncidentsBucket, Description: "Killswitch incidents", Storage: jetstream.FileStorage,
		Replicas: max(1, replicas), History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("pipeline: kv %s: %w", IncidentsBucket, err)
	}
	return &KVIncidents{kv: kv}, nil
}

// Save implements IncidentStore.
func (s *KVIncidents) Save(ctx context.Context, in *ledger.Incident) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("pipeline: encode incident: %w", err)
	}
	if _, err := s.kv.Put(ctx, in.ID, b); err != nil {
		return fmt.Errorf("pipeline: save incident %s: %w", in.ID, err)
	}
	return nil
}

// Incident implements httpapi.IncidentReader.
func (s *KVIncidents) Incident(ctx context.Context, id string) (*ledger.Incident, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("incident %q: %w", id, httpapi.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("pipeline: read incident %s: %w", id, err)
	}
	var in ledger.Incident
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		return nil, fmt.Errorf("pipeline: decode incident %s: %w", id, err)
	}
	return &in, nil
}

// Incidents implements httpapi.IncidentReader: every incident, most recently detected first.
func (s *KVIncidents) Incidents(ctx context.Context) ([]*ledger.Incident, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("pipeline: list incidents: %w", err)
	}
	defer lister.Stop()
	var out []*ledger.Incident
	for k := range lister.Keys() {
		in, err := s.Incident(ctx, k)
		if errors.Is(err, httpapi.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b *ledger.Incident) int {
		if c := b.DetectedAt.Compare(a.DetectedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// RestoreOpen makes every open or contained incident current again in incidents.
func (s *KVIncidents) RestoreOpen(ctx context.Context, incidents *ledger.Incidents) (int, error) {
	all, err := s.Incidents(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, in := range all {
		if in.State != ledger.StateClosed {
			incidents.Restore(in)
			n++
		}
	}
	return n, nil
}

// NATSEvents publishes what happens on killswitch.events.<kind>.<vendor> (core NATS,
// at most once: the ledger is the durable record), and each detection also as an OCSF
// Detection Finding on killswitch.ocsf.detection_finding.<vendor>.
type NATSEvents struct {
	NC *nats.Conn
}

// Emit implements EventSink.
func (e NATSEvents) Emit(_ context.Context, kind, vendor string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tok := SubjectToken(vendor)
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
