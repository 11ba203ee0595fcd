package detectors

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// revSet is a Revocations for tests.
type revSet struct {
	ver   atomic.Uint64
	mu    sync.Mutex
	by    map[string][]Revocation
	calls atomic.Int64 // Revoked calls
}

func (r *revSet) Version() uint64 { return r.ver.Load() }

func (r *revSet) Revoked(vendor string) []Revocation {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.by[vendor]
}

func (r *revSet) set(vendor string, revs ...Revocation) {
	r.mu.Lock()
	if r.by == nil {
		r.by = map[string][]Revocation{}
	}
	r.by[vendor] = revs
	r.mu.Unlock()
	r.ver.Add(1)
}

func ev(at time.Time, vendor, cred string, bytes int64) telemetry.Event {
	return telemetry.Event{Time: at, Vendor: vendor, Credential: cred, Dst: "203.0.113.7", DstPort: 443, Bytes: bytes, Sensor: "gw-1"}
}

func TestUseAfterRevocation(t *testing.T) {
	revokedAt := t0.Add(10 * time.Hour)
	perCred := []Revocation{{Credential: "api", Since: revokedAt, Incident: "inc-1"}}
	vendorWide := []Revocation{{Since: revokedAt, Incident: "inc-v"}}
	// Every case starts with an hour of traffic before the revocation (which never
	// fires: the revocation is set only afterwards), then sends after.
	after := func(d time.Duration) time.Time { return revokedAt.Add(d) }
	cases := []struct {
		name   string
		revs   []Revocation
		events []telemetry.Event
		// want: the credential used of each detection, in order
		want      []string
		wantKey   Key
		wantBytes []int64 // Revoked.Bytes of each detection
		wantNew   []int64 // Revoked.NewBytes
	}{
		{name: "one byte after the revocation fires", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 1)},
			want:   []string{"api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{1}, wantNew: []int64{1}},
		{name: "another credential of the vendor does not", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "smtp", 5000)}},
		{name: "another vendor does not", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "other", "api", 5000)}},
		{name: "zero bytes do not", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 0)}},
		{name: "dated before the revocation does not count", revs: perCred,
			events: []telemetry.Event{ev(revokedAt.Add(-time.Second), "mailer", "api", 1000), ev(after(time.Second), "mailer", "api", 7)},
			want:   []string{"api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{7}, wantNew: []int64{7}},
		{name: "at the revocation's very time does not count", revs: perCred,
			events: []telemetry.Event{ev(revokedAt, "mailer", "api", 1000)}},
		{name: "a forged old time does not count", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 10), ev(t0.Add(-24*time.Hour), "mailer", "api", 1000), ev(after(6*time.Minute), "mailer", "api", 5)},
			want:   []string{"api", "api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{10, 15}, wantNew: []int64{10, 5}},
		{name: "a forged future time is refused by the clock guard", revs: perCred,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 10), ev(after(30*24*time.Hour), "mailer", "api", 1000), ev(after(2*time.Second), "mailer", "api", 5)},
			want:   []string{"api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{10}, wantNew: []int64{10}},
		{name: "once per bucket, the rest is evidence for the next", revs: perCred,
			events: []telemetry.Event{
				ev(after(time.Second), "mailer", "api", 1), ev(after(time.Minute), "mailer", "api", 100), ev(after(2*time.Minute), "mailer", "api", 100),
				ev(after(5*time.Minute), "mailer", "api", 1000), ev(after(6*time.Minute), "mailer", "api", 1)},
			want: []string{"api", "api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{1, 1201}, wantNew: []int64{1, 1200}},
		{name: "vendor-wide: every credential counts, each on its own", revs: vendorWide,
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 1), ev(after(2*time.Second), "mailer", "smtp", 2), ev(after(3*time.Second), "mailer", "api", 3), ev(after(4*time.Second), "mailer", "", 4)},
			want:   []string{"api", "smtp", ""}, wantKey: Key{Vendor: "mailer"}, wantBytes: []int64{1, 2, 4}, wantNew: []int64{1, 2, 4}},
		{name: "the credential's own revocation wins over the vendor's", revs: append([]Revocation{{Since: revokedAt.Add(-time.Hour), Incident: "inc-v"}}, perCred...),
			events: []telemetry.Event{ev(after(time.Second), "mailer", "api", 1)},
			want:   []string{"api"}, wantKey: Key{Vendor: "mailer", Credential: "api"}, wantBytes: []int64{1}, wantNew: []int64{1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := &revSet{}
			e := mustEngine(t, Config{}, WithRevocations(rs))
			before := merge(series("mailer", "api", "203.0.113.7", revokedAt.Add(-time.Hour), revokedAt, time.Minute, constant(100)),
				series("mailer", "smtp", "203.0.113.7", revokedAt.Add(-time.Hour), revokedAt, time.Minute, constant(100)),
				series("other", "api", "203.0.113.7", revokedAt.Add(-time.Hour), revokedAt, time.Minute, constant(100)))
			run(e, before)
			e.Tick(revokedAt, nil)
			rs.set("mailer", tc.revs...)
			got := ofKind(run(e, tc.events), KindUseAfterRevocation)
			if len(got) != len(tc.want) {
				t.Fatalf("%d detections, want %d: %v", len(got), len(tc.want), got)
			}
			ids := map[string]bool{}
			for i, g := range got {
				d := g.d
				if d.Severity != SeverityCritical || d.Revoked == nil || d.Key != tc.wantKey || d.Revoked.Credential != tc.want[i] {
					t.Fatalf("detection %d: %+v (revoked %+v)", i, d, d.Revoked)
				}
				if d.Revoked.Bytes != tc.wantBytes[i] || d.Revoked.NewBytes != tc.wantNew[i] || d.AnomalousBytes != tc.wantBytes[i] {
					t.Errorf("detection %d: bytes %d new %d anomalous %d, want %d and %d", i, d.Revoked.Bytes, d.Revoked.NewBytes, d.AnomalousBytes, tc.wantBytes[i], tc.wantNew[i])
				}
				if d.DetectedAt.Before(revokedAt) || d.FirstAnomalousAt.Before(revokedAt) {
					t.Errorf("detection %d dated before the revocation: %+v", i, d)
				}
				if ids[d.ID] {
					t.Errorf("detection %d: ID %s repeated", i, d.ID)
				}
				ids[d.ID] = true
			}
			if n := e.Counters().Detected(KindUseAfterRevocation); n != uint64(len(tc.want)) {
				t.Errorf("counted %d, want %d", n, len(tc.want))
			}
		})
	}
}

// A flood on a revoked credential makes one detection per bucket, whatever its rate,
// and the evidence adds up to every byte.
func TestUseAfterRevocationFloodIsBounded(t *testing.T) {
	revokedAt := t0.Add(10 * time.Hour)
	rs := &revSet{}
	e := mustEngine(t, Config{}, WithRevocations(rs))
	rs.set("mailer", Revocation{Credential: "api", Since: revokedAt, Incident: "inc-1"})
	calls := rs.calls.Load()
	// 1 hour at 100 events a second: 360,000 events, 12 buckets of 5 minutes.
	var evs []telemetry.Event
	for i := range 359_999 {
		evs = append(evs, ev(revokedAt.Add(time.Duration(i+1)*10*time.Millisecond), "mailer", "api", 3))
	}
	got := ofKind(run(e, evs), KindUseAfterRevocation)
	if len(got) != 12 {
		t.Fatalf("%d detections for an hour's flood, want 12 (one per 5m bucket)", len(got))
	}
	var sum int64
	for _, g := range got {
		sum += g.d.Revoked.NewBytes
	}
	last := got[len(got)-1].d.Revoked
	if last.Events != 330_000 || sum != last.Bytes || last.Bytes != 3*330_000 {
		t.Errorf("last detection: %+v, new bytes summed %d", last, sum)
	}
	if n := rs.calls.Load() - calls; n != 1 {
		t.Errorf("Revoked called %d times for one version, want 1 (cached per vendor)", n)
	}
	// The revocation ends: nothing more, and the evidence is dropped.
	rs.set("mailer")
	if got := ofKind(run(e, []telemetry.Event{ev(revokedAt.Add(61*time.Minute), "mailer", "api", 5)}), KindUseAfterRevocation); len(got) != 0 {
		t.Errorf("fired after the revocation ended: %v", got)
	}
	if len(e.uses) != 0 {
		t.Errorf("%d evidence entries kept after the revocation ended", len(e.uses))
	}
}

// Events jumping between buckets (forged times within the clock guard's bound) never
// fire twice in one bucket nor in an earlier one.
func TestUseAfterRevocationForgedTimesCannotRefire(t *testing.T) {
	revokedAt := t0.Add(10 * time.Hour)
	rs := &revSet{}
	e := mustEngine(t, Config{}, WithRevocations(rs))
	run(e, series("mailer", "api", "203.0.113.7", revokedAt.Add(-time.Hour), revokedAt, time.Minute, constant(100)))
	e.Tick(revokedAt, nil)
	rs.set("mailer", Revocation{Credential: "api", Since: revokedAt, Incident: "inc-1"})
	var evs []telemetry.Event
	for i := range 1000 {
		at := revokedAt.Add(time.Duration(i+1) * time.Millisecond)
		if i%2 == 1 {
			at = at.Add(9 * time.Minute) // within MaxClockJump, two buckets ahead
		}
		evs = append(evs, ev(at, "mailer", "api", 1))
	}
	got := ofKind(run(e, evs), KindUseAfterRevocation)
	if len(got) != 2 {
		t.Fatalf("%d detections, want 2 (the first bucket, then the forged one): %v", len(got), got)
	}
}

func TestUseAfterRevocationDisabled(t *testing.T) {
	rs := &revSet{}
	e := mustEngine(t, Config{Settings: Settings{Disable: []string{"use_after_revocation"}}}, WithRevocations(rs))
	rs.set("mailer", Revocation{Since: t0, Incident: "inc-1"})
	if got := ofKind(run(e, []telemetry.Event{ev(t0.Add(time.Second), "mailer", "api", 5)}), KindUseAfterRevocation); len(got) != 0 {
		t.Errorf("disabled, but fired: %v", got)
	}
	// Without Revocations the detector is off.
	e = mustEngine(t, Config{})
	if got := ofKind(run(e, []telemetry.Event{ev(t0.Add(time.Second), "mailer", "api", 5)}), KindUseAfterRevocation); len(got) != 0 {
		t.Errorf("no revocations, but fired: %v", got)
	}
}

// A Sharded engine asks the revocations from every shard, concurrently (-race).
func TestUseAfterRevocationSharded(t *testing.T) {
	rs := &revSet{}
	var mu sync.Mutex
	var got []Detection
	sink := SinkFunc(func(_ context.Context, d Detection) error {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
		return nil
	})
	s, err := NewSharded(Config{}, 4, sink, WithRevocations(rs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vendors := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, v := range vendors {
		rs.set(v, Revocation{Credential: "k", Since: t0, Incident: "inc-" + v})
	}
	var evs []telemetry.Event
	for i := range 800 {
		evs = append(evs, ev(t0.Add(time.Duration(i)*time.Millisecond), vendors[i%len(vendors)], "k", 1))
	}
	done := make(chan error, 1)
	if err := s.SubmitBatch(context.Background(), evs, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(vendors) {
		t.Fatalf("%d detections, want one per vendor (%d)", len(got), len(vendors))
	}
}
