package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/replay"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

const apiToken = "service-test-token-0123456789"

// running is one in-process `killswitch run`.
type running struct {
	http, nats string
	nc         *nats.Conn
	cancel     context.CancelFunc
	done       chan error
}

// options describes a service to start; dataDir keeps state across a restart.
type options struct {
	cfg     string // YAML
	dataDir string
	execs   actions.Registry
	tick    time.Duration
	// playbooks are the playbooks to load; nil is the shipped library.
	playbooks []playbooks.Source
	// vendors, when set, replace the configuration's inventory; vaultClient is the
	// client of execs (kill-vendor's enumeration and restore).
	vendors     killswitch.Inventory
	vaultClient *api.Client
}

func start(t testing.TB, o options) *running {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader(o.cfg))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	if o.vendors != nil {
		cfg.Vendors = o.vendors
	}
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	cfg.Service.DataDir = o.dataDir
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	if o.playbooks == nil {
		o.playbooks = []playbooks.Source{playbooks.Shipped()}
	}
	go func() {
		r.done <- service.Run(ctx, service.Options{
			Config: cfg, Playbooks: o.playbooks, VaultExecutors: o.execs, VaultClient: o.vaultClient,
			APIToken: apiToken, Log: logger(t), CheckpointEvery: time.Hour, TickEvery: o.tick, EvalTimeout: evalTimeout(t),
			Ready: func(h, n string) { r.http, r.nats = h, n; close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-r.done:
		t.Fatalf("service did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not start within 30s")
	}
	nc, err := natsconn.Options{URL: r.nats, CredsFile: embeddednats.CredsFile(o.dataDir, embeddednats.RoleService), Name: "service-test"}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r.nc = nc
	t.Cleanup(func() { r.stop(t) })
	return r
}

// logger logs to the test at debug level, and only warnings in benchmarks (a log line
// per step would be measured too).
func logger(t testing.TB) *zap.Logger {
	if _, ok := t.(*testing.B); ok {
		return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("service")
	}
	return zaptest.NewLogger(t).Named("service")
}

// evalTimeout keeps the service's 50 ms evaluation deadline in benchmarks, and gives
// tests a minute: under -race on a loaded machine an evaluation can take longer, and a
// timeout escalation would hold a revocation the test waits for.
func evalTimeout(t testing.TB) time.Duration {
	if _, ok := t.(*testing.B); ok {
		return 0
	}
	return time.Minute
}

// stop shuts the service down gracefully and checks that it exits cleanly.
func (r *running) stop(t testing.TB) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.nc.Close()
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("service exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("service did not stop within 30s")
	}
}

// api calls the API as the bootstrap admin.
func (r *running) api(t testing.TB, method, path, body string) (int, []byte) {
	t.Helper()
	return r.apiAs(t, apiToken, method, path, body)
}

func (r *running) publish(t testing.TB, evs ...telemetry.Event) {
	t.Helper()
	pub, err := telnats.NewPublisher(r.nc, telnats.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if err := pub.Publish(context.Background(), &evs[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// incidents lists the incidents through the API.
func (r *running) incidents(t testing.TB) []incidents.Incident {
	t.Helper()
	code, b := r.api(t, http.MethodGet, "/api/incidents?limit=1000", "")
	if code != http.StatusOK {
		t.Fatalf("GET /api/incidents: %d %s", code, b)
	}
	var out struct {
		Incidents []incidents.Incident `json:"incidents"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out.Incidents
}

// waitFor polls cond every 20 ms for up to a minute (a loaded CI machine under -race is slow).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crossing is an event that crosses a 1 MB cap three times over (a critical cap).
func crossing(vendor, cred string) telemetry.Event {
	return telemetry.Event{Time: time.Now().UTC(), Vendor: vendor, Credential: cred, Dst: "203.0.113.9", DstPort: 443,
		Bytes: 3 << 20, Records: 10, Sensor: "gw-1"}
}

func capConfig(vendors map[string]string) string {
	var b strings.Builder
	b.WriteString("actions: {budget: 1000, vendor_budget: 10}\nvendors:\n")
	for v, accessor := range vendors {
		fmt.Fprintf(&b, "  %s:\n    caps: [{credential: %s-api, bytes: 1MB, per: 1h}]\n    credentials:\n      %s-api: {kind: token, accessor: %s}\n", v, v, v, accessor)
	}
	return b.String()
}

// Without a Vault the service runs in dry-run and says so; a crossing event still
// becomes an incident with its actions planned. It stops cleanly, and a restart on the
// same data restores the open incident: the next detection joins it.
func TestServiceDryRunAndRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := capConfig(map[string]string{"mailer": "acc-1"})
	s := start(t, options{cfg: cfg, dataDir: dir})
	if code, b := s.api(t, http.MethodGet, "/readyz", ""); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, b)
	}
	if code, b := s.api(t, http.MethodGet, "/api/status", ""); code != http.StatusOK || !bytes.Contains(b, []byte(`"mode": "dry-run"`)) || !bytes.Contains(b, []byte("dry_run_reason")) {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	if got := s.incidents(t); len(got) != 0 {
		t.Fatalf("incidents before any telemetry: %+v", got)
	}
	s.publish(t, crossing("mailer", "mailer-api"))
	var first incidents.Incident
	waitFor(t, "the incident with its planned revocation", func() bool {
		got := s.incidents(t)
		if len(got) != 1 || len(got[0].Actions) == 0 {
			return false
		}
		first = got[0]
		return true
	})
	for _, a := range first.Actions {
		if a.Type.Destructive() && a.Status != incidents.ActionPlanned {
			t.Fatalf("dry-run applied something: %+v", a)
		}
	}
	s.stop(t)

	s = start(t, options{cfg: cfg, dataDir: dir})
	ev := crossing("mailer", "mailer-api")
	ev.Dst = "198.51.100.77" // a new destination: another detector, same incident
	ev.Bytes = 10
	s.publish(t, ev)
	time.Sleep(200 * time.Millisecond)
	waitFor(t, "the restored incident to take the new detection", func() bool {
		got := s.incidents(t)
		return len(got) == 1 && got[0].ID == first.ID && got[0].DetectionCount >= first.DetectionCount
	})
	verifyLedger(t, s)
}

func verifyLedger(t testing.TB, s *running) {
	t.Helper()
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ledger.Verify(ledgerjs.ReadStream(ctx, st))
	if err != nil || res.Records == 0 {
		t.Fatalf("ledger: %+v, %v", res, err)
	}
}

// vaultRig is a dev Vault with tokens to steal and the executors on a token holding the
// least-privilege policy for the inventory.
type vaultRig struct {
	v     *testharness.Vault
	root  *api.Client
	execs actions.Registry
	scope string            // the executors' token (the inventory's least-privilege policy)
	inv   map[string]string // vendor → accessor
	token map[string]string // vendor → token
}

func newVaultRig(t testing.TB, vendors ...string) *vaultRig {
	t.Helper()
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	r := &vaultRig{v: v, root: root, inv: map[string]string{}, token: map[string]string{}}
	for _, name := range vendors {
		sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		r.inv[name], r.token[name] = sec.Auth.Accessor, sec.Auth.ClientToken
	}
	cfg, err := config.Parse(strings.NewReader(capConfig(r.inv)))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := vault.PolicyFor(cfg.Vendors)
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "killswitch", policy); err != nil {
		t.Fatal(err)
	}
	ks, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"killswitch"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := api.NewClient(&api.Config{Address: v.Addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(ks.Auth.ClientToken)
	r.execs, r.scope = vault.New(client), ks.Auth.ClientToken
	return r
}

// alive reports whether a vendor's token still works.
func (r *vaultRig) alive(t testing.TB, vendor string) bool {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: r.v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(r.token[vendor])
	_, err = c.Auth().Token().LookupSelf()
	return err == nil
}

// The whole loop in process against the real dev Vault: a crossing event is revoked and
// verified, the stolen token is dead, the exposure window is measured. A paused service
// holds the next vendor's revocation; approved over the API after resuming, it runs once
// and the incident follows (the approval reaches the incident through the responder).
func TestServiceRevokesAndApprovals(t *testing.T) {
	rig := newVaultRig(t, "mailer", "crm")
	s := start(t, options{cfg: capConfig(rig.inv), execs: rig.execs})
	s.publish(t, crossing("mailer", "mailer-api"))
	waitFor(t, "mailer contained", func() bool {
		for _, in := range s.incidents(t) {
			if in.Vendor == "mailer" && in.State == incidents.StateContained && in.ExposureWindowSeconds != nil {
				return true
			}
		}
		return false
	})
	if rig.alive(t, "mailer") {
		t.Fatal("the stolen token still works after a verified revocation")
	}
	if code, b := s.api(t, http.MethodGet, "/metrics", ""); code != http.StatusOK || !bytes.Contains(b, []byte("killswitch_exposure_window_seconds_count 1")) {
		t.Fatalf("/metrics: %d, exposure window not observed once", code)
	}

	if code, b := s.api(t, http.MethodPost, "/api/pause", `{"reason":"drill"}`); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, b)
	}
	s.publish(t, crossing("crm", "crm-api"))
	var held incidents.ActionRef
	waitFor(t, "crm's revocation held", func() bool {
		for _, in := range s.incidents(t) {
			for _, a := range in.Actions {
				if in.Vendor == "crm" && a.Type.Destructive() && a.Status == incidents.ActionHeld {
					held = a
					return true
				}
			}
		}
		return false
	})
	if !rig.alive(t, "crm") {
		t.Fatal("a paused service revoked")
	}
	if code, b := s.api(t, http.MethodPost, "/api/resume", `{}`); code != http.StatusOK {
		t.Fatalf("resume: %d %s", code, b)
	}
	if code, b := s.api(t, http.MethodPost, "/api/actions/"+held.ID+"/approve", `{"comment":"confirmed"}`); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, b)
	}
	if code, _ := s.api(t, http.MethodPost, "/api/actions/"+held.ID+"/approve", `{}`); code != http.StatusConflict {
		t.Fatalf("second approval: %d, want 409", code)
	}
	waitFor(t, "crm contained by the approved action", func() bool {
		for _, in := range s.incidents(t) {
			if in.Vendor == "crm" && in.State == incidents.StateContained {
				return true
			}
		}
		return false
	})
	if rig.alive(t, "crm") {
		t.Fatal("the approved revocation did not kill the token")
	}
	verifyLedger(t, s)
}

// A storm of escalations across vendors with a history holds those vendors'
// destructive actions (never a fleet-wide pause) and pages; the status lists the storm
// and what it holds; the third vendor's token survives until someone approves; resume
// lifts the hold. Made-up vendor names cannot start a storm.
func TestServiceStormHoldsItsVendorsAndPages(t *testing.T) {
	rig := newVaultRig(t, "a", "b", "c")
	s := start(t, options{cfg: capConfig(rig.inv) + "incidents: {storm: {vendors: 3, window: 1h}}\n", execs: rig.execs})
	pages, err := s.nc.SubscribeSync("killswitch.notify.storm")
	if err != nil {
		t.Fatal(err)
	}
	// Made-up names crossing nothing they have a cap for: no detection, no storm.
	for i := range 20 {
		s.publish(t, crossing(fmt.Sprintf("made-up-%d", i), "x"))
	}
	contained := func(v string) func() bool {
		return func() bool {
			for _, in := range s.incidents(t) {
				if in.Vendor == v && in.State == incidents.StateContained {
					return true
				}
			}
			return false
		}
	}
	for _, v := range []string{"a", "b"} {
		s.publish(t, crossing(v, v+"-api"))
		waitFor(t, v+" contained", contained(v))
	}
	s.publish(t, crossing("c", "c-api")) // the third vendor within the window
	m, err := pages.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatalf("no page: %v", err)
	}
	if !bytes.Contains(m.Data, []byte(`"page":true`)) || !bytes.Contains(m.Data, []byte(`"vendors":["a","b","c"]`)) {
		t.Fatalf("page %s", m.Data)
	}
	var st httpapi.Status
	waitFor(t, "the storm holding c's revocation", func() bool {
		code, b := s.api(t, http.MethodGet, "/api/status", "")
		st = httpapi.Status{}
		return code == http.StatusOK && json.Unmarshal(b, &st) == nil && st.Storm != nil && len(st.Storm.Held) == 1
	})
	if st.Paused || strings.Join(st.Storm.Vendors, ",") != "a,b,c" {
		t.Fatalf("status during the storm: %+v", st)
	}
	if !rig.alive(t, "c") {
		t.Fatal("the storm's third vendor was revoked without an approval")
	}
	if code, b := s.api(t, http.MethodPost, "/api/resume", `{}`); code != http.StatusOK || bytes.Contains(b, []byte(`"storm"`)) {
		t.Fatalf("resume: %d %s", code, b)
	}
	if code, b := s.api(t, http.MethodPost, "/api/actions/"+st.Storm.Held[0]+"/approve", `{}`); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, b)
	}
	waitFor(t, "c contained by the approved action", contained("c"))
	if rig.alive(t, "c") {
		t.Fatal("the approved revocation did not kill c's token")
	}
	verifyLedger(t, s)
}

// The service refuses a configuration it cannot run with, and says why.
func TestServiceStartFailures(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	cfg.Service.NATS.URL = "nats://127.0.0.1:1" // nothing listens there
	cfg.Service.DataDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = service.Run(ctx, service.Options{Config: cfg, Playbooks: []playbooks.Source{playbooks.Shipped()}, APIToken: apiToken})
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run with NATS unreachable = %v, want a connection error", err)
	}
}

// The same recording gives the same incidents through `replay` and through `run`: the
// two drive one pipeline and differ only in their source and their clock. (Silence is
// checked against processing time by design, so a recording published at once into the
// service would look silent: the test turns the silence detector off.)
func TestReplayAndRunGiveTheSameIncidents(t *testing.T) {
	ctx := context.Background()
	sc := scenario.New(scenario.Config{Seed: 5, Start: time.Now().Add(-10 * 24 * time.Hour), Days: 10, Vendors: 4, EventsPerMinute: 1})
	var cfgYAML bytes.Buffer
	if err := sc.WriteConfig(&cfgYAML); err != nil {
		t.Fatal(err)
	}
	// The recording is ten days old: the door must not refuse it as too old.
	cfgYAML.WriteString("detectors: {disable: [silence]}\nincidents: {storm: {vendors: -1}}\ntelemetry: {max_age: 2400h}\n")
	cfg, err := config.Parse(bytes.NewReader(cfgYAML.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "recording.ndjson")
	if _, err := sc.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: []playbooks.Source{playbooks.Shipped()}, PollInterval: -1, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replay.Run(ctx, telemetry.NewFileSource(telemetry.FileOptions{}, path), replay.Options{
		Detectors: cfg.Detectors, Vendors: cfg.Vendors, Incidents: cfg.Incidents, Actions: cfg.Actions, Playbooks: pb,
		NewActor: replay.PlanActions(cfg.Actions, cfg.Vendors),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Incidents) < 3 {
		t.Fatalf("the recording makes only %d incidents: not a test", len(rep.Incidents))
	}

	s := start(t, options{cfg: cfgYAML.String(), tick: time.Hour})
	pub, err := telnats.NewPublisher(s.nc, telnats.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := sc.Publish(ctx, pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	if int64(n) != rep.Events {
		t.Fatalf("published %d events, replayed %d", n, rep.Events)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event and every detection handled", func() bool {
		tel, err := js.Consumer(ctx, "EGRESS", "killswitch-telemetry")
		if err != nil {
			return false
		}
		ti, err := tel.Info(ctx)
		if err != nil || ti.AckFloor.Stream < uint64(n) {
			return false
		}
		det, err := js.Consumer(ctx, "KILLSWITCH_DETECTIONS", "killswitch-respond")
		if err != nil {
			return false
		}
		di, err := det.Info(ctx)
		return err == nil && di.NumPending == 0 && di.NumAckPending == 0
	})
	type key struct{ ID, Vendor, Credential, Detectors, FirstAnomalous, Detected string }
	var fromReplay, fromRun []key
	for _, in := range rep.Incidents {
		fromReplay = append(fromReplay, key{in.ID, in.Vendor, in.Credential, strings.Join(in.Detectors, ","), in.FirstAnomalousAt, in.DetectedAt})
	}
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	for _, in := range s.incidents(t) {
		var kinds []string
		for _, k := range in.Detectors {
			kinds = append(kinds, string(k))
		}
		fromRun = append(fromRun, key{in.ID, in.Vendor, in.Credential, strings.Join(kinds, ","), ts(in.FirstAnomalousAt), ts(in.DetectedAt)})
	}
	order := func(a, b key) int { return strings.Compare(a.ID, b.ID) }
	slices.SortFunc(fromReplay, order)
	slices.SortFunc(fromRun, order)
	if !slices.Equal(fromReplay, fromRun) {
		t.Fatalf("replay and run differ:\nreplay: %+v\nrun:    %+v", fromReplay, fromRun)
	}
	t.Logf("%d events, %d incidents, the same through replay and run", n, len(fromRun))
}
