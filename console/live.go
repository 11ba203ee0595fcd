package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/ledger"
)

// liveEvent is what the console tells the browsers of one service event: enough to know
// what changed (the page then fetches itself again), never the event's payload.
type liveEvent struct {
	Kind     string `json:"kind"`
	Vendor   string `json:"vendor"`
	ID       string `json:"id,omitempty"`
	Incident string `json:"incident,omitempty"`
	// At is when the console received it (Unix milliseconds).
	At int64 `json:"at"`
}

// hub relays the service's events to the live streams.
type hub struct {
	clock clock.Clock

	mu      sync.Mutex
	clients map[chan liveEvent]struct{}
	done    chan struct{}
	closed  bool
}

func newHub(c clock.Clock) *hub {
	return &hub{clock: c, clients: make(map[chan liveEvent]struct{}), done: make(chan struct{})}
}

// relay takes one message of killswitch.events.<kind>.<vendor>.
func (h *hub) relay(subject string, data []byte) {
	rest, ok := strings.CutPrefix(subject, "killswitch.events.")
	if !ok {
		return
	}
	kind, vendor, _ := strings.Cut(rest, ".")
	ev := liveEvent{Kind: kind, Vendor: vendor, At: h.clock.Now().UnixMilli()}
	var body struct {
		ID       string `json:"id"`
		Incident string `json:"incident"`
	}
	if json.Unmarshal(data, &body) == nil {
		ev.ID, ev.Incident = body.ID, body.Incident
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.clients {
		select {
		case ch <- ev:
		default: // a slow browser misses one: the next event refreshes its page anyway
		}
	}
}

func (h *hub) join() (chan liveEvent, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false
	}
	ch := make(chan liveEvent, 64)
	h.clients[ch] = struct{}{}
	return ch, true
}

func (h *hub) leave(ch chan liveEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.clients, ch)
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// events streams the service's events to a browser (server-sent events) until it goes
// away or the console closes, with a comment every 15 s to keep proxies from closing it.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // the server's write timeout would end the stream
	ch, ok := c.hub.join()
	if !ok {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer c.hub.leave(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n: live\n\n")
	if err := rc.Flush(); err != nil {
		return
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-c.hub.done:
			return
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case ev := <-ch:
			b, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			fmt.Fprintf(w, "data: %s\n\n", b)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// volumes keeps each key's recent volume per bucket (a ring covering History) from the
// telemetry, for the incident charts.
type volumes struct {
	clock clock.Clock
	width time.Duration
	n     int
	max   int

	mu   sync.Mutex
	keys map[detectors.Key]*ring
}

// ring is one key's volume: slot b%n holds bucket b, for the n buckets up to last.
type ring struct {
	bytes []float64
	last  int64
}

func newVolumes(c clock.Clock, width time.Duration, n, maxKeys int) *volumes {
	return &volumes{clock: c, width: width, n: max(n, 1), max: maxKeys, keys: make(map[detectors.Key]*ring)}
}

// telemetryFields are the fields of a telemetry event the charts need.
type telemetryFields struct {
	Time       time.Time `json:"time"`
	Vendor     string    `json:"vendor"`
	Credential string    `json:"credential"`
	Bytes      int64     `json:"bytes"`
}

// observe counts one telemetry message. Telemetry is untrusted: an event that does not
// decode, names nothing, or lies outside [now − History, now + one bucket] is not
// counted, so no event can move a key's ring forward and wipe its history.
func (v *volumes) observe(_ string, data []byte) {
	var ev telemetryFields
	if json.Unmarshal(data, &ev) != nil || ev.Vendor == "" || len(ev.Vendor) > 256 || len(ev.Credential) > 256 || ev.Bytes < 0 {
		return
	}
	now := v.clock.Now()
	if ev.Time.After(now.Add(v.width)) || ev.Time.Before(now.Add(-time.Duration(v.n)*v.width)) {
		return
	}
	b := ev.Time.UnixNano() / int64(v.width)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.add(detectors.Key{Vendor: ev.Vendor}, b, float64(ev.Bytes))
	if ev.Credential != "" {
		v.add(detectors.Key{Vendor: ev.Vendor, Credential: ev.Credential}, b, float64(ev.Bytes))
	}
}

func (v *volumes) add(k detectors.Key, b int64, bytes float64) {
	r := v.keys[k]
	if r == nil {
		if len(v.keys) >= v.max {
			return
		}
		r = &ring{bytes: make([]float64, v.n), last: b}
		v.keys[k] = r
	}
	n := int64(v.n)
	if b > r.last {
		for i := r.last + 1; i <= b && i <= r.last+n; i++ {
			r.bytes[i%n] = 0
		}
		r.last = b
	}
	if b <= r.last-n {
		return
	}
	r.bytes[b%n] += bytes
}

// bucketVolume is one bucket of a key's volume.
type bucketVolume struct {
	Start time.Time
	Bytes float64
}

// series returns key's non-empty buckets from from to to, in order.
func (v *volumes) series(k detectors.Key, from, to time.Time) []bucketVolume {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.keys[k]
	if r == nil {
		return nil
	}
	n := int64(v.n)
	lo, hi := max(from.UnixNano()/int64(v.width), r.last-n+1), min(to.UnixNano()/int64(v.width), r.last)
	var out []bucketVolume
	for b := lo; b <= hi; b++ {
		if x := r.bytes[b%n]; x > 0 {
			out = append(out, bucketVolume{Start: time.Unix(0, b*int64(v.width)).UTC(), Bytes: x})
		}
	}
	return out
}

// set fills key's buckets (tests and benchmarks; the service fills them from telemetry).
func (v *volumes) set(k detectors.Key, pts []bucketVolume) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range pts {
		v.add(k, p.Start.UnixNano()/int64(v.width), p.Bytes)
	}
}

// trails keeps each incident's ledger records, as they are published, for its page.
type trails struct {
	maxIncidents, maxRecords int

	mu    sync.Mutex
	by    map[string]*trail
	order []string // incidents, oldest first
}

type trail struct {
	records []ledger.Record
	ids     map[string]struct{}
}

func newTrails(maxIncidents, maxRecords int) *trails {
	return &trails{maxIncidents: maxIncidents, maxRecords: maxRecords, by: make(map[string]*trail)}
}

// record takes one ledger message; a record published twice is kept once.
func (t *trails) record(_ string, data []byte) {
	rec, err := ledger.DecodeRecord(data)
	if err != nil || rec.Incident == "" {
		return
	}
	t.add(rec)
}

func (t *trails) add(rec ledger.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr := t.by[rec.Incident]
	if tr == nil {
		if len(t.order) >= t.maxIncidents {
			delete(t.by, t.order[0])
			t.order = t.order[1:]
		}
		tr = &trail{ids: make(map[string]struct{})}
		t.by[rec.Incident] = tr
		t.order = append(t.order, rec.Incident)
	}
	key := string(rec.Type) + "\x00" + rec.ID
	if _, dup := tr.ids[key]; dup || len(tr.records) >= t.maxRecords {
		return
	}
	tr.ids[key] = struct{}{}
	tr.records = append(tr.records, rec)
}

// of returns a copy of an incident's records.
func (t *trails) of(incident string) []ledger.Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr := t.by[incident]; tr != nil {
		out := make([]ledger.Record, len(tr.records))
		copy(out, tr.records)
		return out
	}
	return nil
}
