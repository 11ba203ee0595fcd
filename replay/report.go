package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// Report is the replay's JSON report. The fields of DESIGN.md (events, first_event,
// last_event, incidents and their fields) are a stable contract for other tools; the
// others extend it compatibly. All times are event times (RFC 3339).
type Report struct {
	Events     int64      `json:"events"`
	FirstEvent string     `json:"first_event"`
	LastEvent  string     `json:"last_event"`
	Incidents  []Incident `json:"incidents"`
	// Summary is the headline numbers.
	Summary Summary `json:"summary"`
	// FleetShifts lists the fleet-wide shifts the detectors observed (most vendors
	// moving together: one observation, not one incident per vendor), oldest first.
	FleetShifts []FleetShift `json:"fleet_shifts"`
	// Flips lists the decisions that differ between the baseline and the candidate
	// playbooks (only with a baseline).
	Flips []Flip `json:"flips,omitempty"`

	details  []detail        // per incident, for the HTML report
	records  []ledger.Record // the replay's ledger
	planned  bool            // containment is a planned revocation (no Vault)
	unmapped []string        // the unmapped credentials the plan targets (vendor/credential), sorted
}

// Incident is one incident of the report.
type Incident struct {
	ID                     string   `json:"id"`
	Vendor                 string   `json:"vendor"`
	Credential             string   `json:"credential"`
	Detectors              []string `json:"detectors"`
	FirstAnomalousAt       string   `json:"first_anomalous_at"`
	DetectedAt             string   `json:"detected_at"`
	ContainedAt            *string  `json:"contained_at"`
	ExposureWindowSeconds  *float64 `json:"exposure_window_seconds"`
	BytesBeforeContainment int64    `json:"bytes_before_containment"`
	BytesAfterContainment  int64    `json:"bytes_after_containment"`
	Actions                []Action `json:"actions"`
	// UseAfterRevocation is set when data moved on the incident's revoked credential
	// (any credential of its vendor, for a vendor-wide incident) after its containment
	// was detected: use_after_revocation detections (absent when none).
	UseAfterRevocation *UseAfterRevocation `json:"use_after_revocation,omitempty"`
}

// UseAfterRevocation is what an incident's use_after_revocation detections say.
type UseAfterRevocation struct {
	// Detections counts them (at most one per credential per detector interval).
	Detections int `json:"detections"`
	// FirstAt and LastAt are the event times of the first and the last.
	FirstAt string `json:"first_at"`
	LastAt  string `json:"last_at"`
	// Bytes is what moved after the revocation: the incident's bytes_after_containment
	// when it measured more (it counts every event; the detections count up to the
	// last of them), else the bytes the detections reported.
	Bytes int64 `json:"bytes"`
	// RevokedBy lists the incidents whose revocations the data moved after, when not
	// this one (a detection after the revoking incident closed opens a new incident).
	RevokedBy []string `json:"revoked_by,omitempty"`
}

// Action is one action of an incident: planned, applied, verified, held or failed.
type Action struct {
	Type   string `json:"type"`
	Target string `json:"target"`
	Status string `json:"status"`
	At     string `json:"at"`
	// Unmapped marks an action on a credential the inventory does not list, planned as
	// if it did (Options.Unmapped): its target says to add the credential to the
	// inventory to revoke it for real.
	Unmapped bool `json:"unmapped,omitempty"`
}

// Summary is the report's headline.
type Summary struct {
	Incidents int `json:"incidents"`
	Contained int `json:"contained"`
	// MedianExposureSeconds and WorstExposureSeconds cover contained incidents.
	MedianExposureSeconds *float64 `json:"median_exposure_window_seconds"`
	WorstExposureSeconds  *float64 `json:"worst_exposure_window_seconds"`
	// BytesStopped is what the revocations would have stopped (bytes after containment).
	BytesStopped int64 `json:"bytes_stopped"`
	// BytesExposed is what left before containment.
	BytesExposed int64 `json:"bytes_exposed"`
	// UnmappedCredentials counts the distinct credentials the inventory does not list
	// that the plan targets (actions marked unmapped, planned or held; 0 without
	// Options.Unmapped).
	UnmappedCredentials int `json:"unmapped_credentials"`
	// ContainedUnmapped counts the contained incidents whose containment rests only on
	// actions on unmapped credentials: contained once those are in the inventory.
	ContainedUnmapped int `json:"contained_unmapped"`
	// FleetShifts counts the fleet-wide shifts observed (listed in fleet_shifts).
	FleetShifts int `json:"fleet_shifts"`
	// UseAfterRevocation counts the incidents with use_after_revocation detections, and
	// BytesAfterRevocation the bytes those report (see Incident.UseAfterRevocation).
	UseAfterRevocation   int   `json:"use_after_revocation"`
	BytesAfterRevocation int64 `json:"bytes_after_revocation"`
}

// FleetShift is one fleet-wide shift the detectors observed: most vendors with a
// mature baseline moved together, by the common factor (the median vendor's volume
// ratio to its expected volume). While a rise lasts the spike and sustained detectors
// discount it (bounded); caps, new destinations and dormant credentials never do.
type FleetShift struct {
	// At is the start of the bucket in which the shift was first seen; Until is when it
	// was seen to end (absent if it lasted to the end of the replay).
	At    string  `json:"at"`
	Until *string `json:"until,omitempty"`
	// VendorsMoved of VendorsTotal measured vendors moved with it when it was first seen.
	VendorsMoved int `json:"vendors_moved"`
	VendorsTotal int `json:"vendors_total"`
	// Factor is the common factor: above 1 for a rise, below 1 for a dip (its extreme
	// while it lasted).
	Factor float64 `json:"factor"`
	// Discounted says whether the volume detectors discounted it (rises only).
	Discounted bool `json:"discounted"`
}

// Flip is a decision that differs between two playbook sets on the same input.
type Flip struct {
	Incident        string `json:"incident"`
	Detection       string `json:"detection"`
	Vendor          string `json:"vendor"`
	Credential      string `json:"credential"`
	Detector        string `json:"detector"`
	At              string `json:"at"`
	Baseline        string `json:"baseline"`
	Candidate       string `json:"candidate"`
	BaselineReason  string `json:"baseline_reason"`
	CandidateReason string `json:"candidate_reason"`
}

// detail is what the HTML report needs beyond the JSON.
type detail struct {
	incident *incidents.Incident
	series   *series
}

func summarize(r *Report) Summary {
	s := Summary{Incidents: len(r.Incidents), FleetShifts: len(r.FleetShifts)}
	var windows []float64
	for _, in := range r.Incidents {
		if in.ExposureWindowSeconds != nil {
			s.Contained++
			windows = append(windows, *in.ExposureWindowSeconds)
		}
		s.BytesStopped += in.BytesAfterContainment
		s.BytesExposed += in.BytesBeforeContainment
		if u := in.UseAfterRevocation; u != nil {
			s.UseAfterRevocation++
			s.BytesAfterRevocation += u.Bytes
		}
	}
	if len(windows) > 0 {
		sort.Float64s(windows)
		med := windows[len(windows)/2]
		if len(windows)%2 == 0 {
			med = round3((windows[len(windows)/2-1] + windows[len(windows)/2]) / 2)
		}
		worst := windows[len(windows)-1]
		s.MedianExposureSeconds, s.WorstExposureSeconds = &med, &worst
	}
	return s
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("replay: write JSON report: %w", err)
	}
	return nil
}

// summarizeDecision renders what a decision does in a few words, so two decisions can
// be compared: "escalated: …", "no action", or the actions with "(approval)".
func summarizeDecision(res playbooks.Result) string {
	if res.Escalated {
		return "escalated (" + string(res.Escalation) + ")"
	}
	var parts []string
	for _, a := range res.Decision.Actions {
		p := string(a.Type)
		if a.Credential != "" {
			p += " " + a.Credential
		}
		if a.Mode != "" && a.Mode != killswitch.ModeEnforce {
			p += " [" + string(a.Mode) + "]"
		}
		parts = append(parts, p)
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "no action"
	}
	s := strings.Join(parts, ", ")
	if res.Decision.RequiresApproval {
		s += " (approval)"
	}
	return s
}
