package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/users"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// apiAs calls the API with a given bearer token.
func (r *running) apiAs(t testing.TB, token, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+r.http+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Users added while the service runs work at once; each role gets its routes and 403
// on the others; an approval and a rejection record the authenticated user, never a
// name from the body, in the ledger, in the held action and in the incident; pause and
// resume record the admin who did them.
func TestServiceRecordsTheAuthenticatedUser(t *testing.T) {
	ctx := context.Background()
	rig := newVaultRig(t, "crm", "hr")
	dir := t.TempDir()
	s := start(t, options{cfg: capConfig(rig.inv), execs: rig.execs, dataDir: dir})

	// `killswitch users add` on the running service's data directory.
	store := users.Open(users.Path(dir), users.Options{})
	tok := map[string]string{}
	for name, role := range map[string]users.Role{"val": users.Viewer, "ana": users.Approver, "ops": users.Admin} {
		_, t2, err := store.Add(ctx, name, role)
		if err != nil {
			t.Fatal(err)
		}
		tok[name] = t2
	}
	// The configured token is the bootstrap admin's.
	if code, b := s.api(t, http.MethodGet, "/api/status", ""); code != http.StatusOK {
		t.Fatalf("bootstrap admin: %d %s", code, b)
	}
	for _, tc := range []struct {
		who, method, path, body string
		code                    int
	}{
		{"val", "GET", "/api/incidents", "", 200},
		{"val", "GET", "/metrics", "", 200},
		{"val", "POST", "/api/pause", `{}`, 403},
		{"ana", "POST", "/api/pause", `{}`, 403},
		{"ana", "POST", "/api/breaker/reset", `{}`, 403},
		{"ops", "POST", "/api/pause", `{"who":"mallory","reason":"drill"}`, 400},
		{"ops", "POST", "/api/pause", `{"reason":"drill"}`, 200},
	} {
		if code, b := s.apiAs(t, tok[tc.who], tc.method, tc.path, tc.body); code != tc.code {
			t.Fatalf("%s %s %s as %s: %d %s, want %d", tc.method, tc.path, tc.body, tc.who, code, b, tc.code)
		}
	}
	var st httpapi.Status
	if code, b := s.apiAs(t, tok["val"], "GET", "/api/status", ""); code != 200 || json.Unmarshal(b, &st) != nil || !st.Paused || st.PausedBy != "ops" {
		t.Fatalf("status after ops paused: %d %s", code, b)
	}

	s.publish(t, crossing("crm", "crm-api"), crossing("hr", "hr-api"))
	held := map[string]incidents.ActionRef{}
	waitFor(t, "both revocations held", func() bool {
		for _, in := range s.incidents(t) {
			for _, a := range in.Actions {
				if a.Type.Destructive() && a.Status == incidents.ActionHeld {
					held[in.Vendor] = a
				}
			}
		}
		return len(held) == 2
	})
	approve := "/api/actions/" + held["crm"].ID + "/approve"
	reject := "/api/actions/" + held["hr"].ID + "/reject"
	for _, tc := range []struct {
		who, path, body string
		code            int
		want            string
	}{
		{"val", approve, `{}`, 403, `needs the approver role`},
		{"ana", approve, `{"approver":"bob","comment":"x"}`, 400, `approver \"bob\" is not the authenticated user \"ana\"`},
		{"ops", "/api/resume", `{}`, 200, `"paused": false`},
		{"ana", approve, `{"comment":"confirmed with the vendor"}`, 200, held["crm"].ID},
		{"ana", reject, `{"approver":"ana","comment":"false positive"}`, 200, held["hr"].ID},
	} {
		if code, b := s.apiAs(t, tok[tc.who], "POST", tc.path, tc.body); code != tc.code || !bytes.Contains(b, []byte(tc.want)) {
			t.Fatalf("POST %s %s as %s: %d %s, want %d containing %s", tc.path, tc.body, tc.who, code, b, tc.code, tc.want)
		}
	}
	waitFor(t, "crm contained by ana's approval, hr's revocation rejected by ana", func() bool {
		done := 0
		for _, in := range s.incidents(t) {
			for _, a := range in.Actions {
				switch {
				case in.Vendor == "crm" && in.State == incidents.StateContained && a.ID == held["crm"].ID:
					done++
				case in.Vendor == "hr" && a.ID == held["hr"].ID && a.Status == incidents.ActionRejected:
					if !strings.Contains(a.Detail, "rejected by ana") {
						t.Fatalf("hr's action: %+v", a)
					}
					done++
				}
			}
		}
		return done == 2
	})
	if rig.alive(t, "crm") || !rig.alive(t, "hr") {
		t.Fatal("crm's token should be dead and hr's alive")
	}

	// The held actions record ana.
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, actions.ApprovalsBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	decided := 0
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var h actions.Held
		if err := json.Unmarshal(e.Value(), &h); err != nil {
			t.Fatal(err)
		}
		if h.ID == held["crm"].ID || h.ID == held["hr"].ID {
			if h.Approver != "ana" {
				t.Fatalf("held action %s decided by %q, want ana", h.ID, h.Approver)
			}
			decided++
		}
	}
	if decided != 2 {
		t.Fatalf("%d held actions found, want 2", decided)
	}

	// The ledger records ana's approval and rejection and ops's pause and resume; the
	// names from the refused bodies appear nowhere.
	lst, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for rec, err := range ledgerjs.ReadStream(ctx, lst) {
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(rec.Payload, []byte("bob")) || bytes.Contains(rec.Payload, []byte("mallory")) {
			t.Fatalf("the ledger records a name from a refused body: %s", rec.Payload)
		}
		var p struct {
			Stage, Approver, Switch, By, Action string
			On                                  bool
		}
		_ = json.Unmarshal(rec.Payload, &p)
		switch {
		case rec.Type == ledger.TypeAction && p.Stage == "approved" && p.Action == held["crm"].ID:
			found["approved by "+p.Approver] = true
		case rec.Type == ledger.TypeAction && p.Stage == "rejected" && p.Action == held["hr"].ID:
			found["rejected by "+p.Approver] = true
		case rec.Type == ledger.TypeControl && p.Switch != "":
			found[p.Switch+" "+map[bool]string{true: "on", false: "off"}[p.On]+" by "+p.By] = true
		}
	}
	for _, want := range []string{"approved by ana", "rejected by ana"} {
		if !found[want] {
			t.Errorf("the ledger lacks %q: %v", want, found)
		}
	}
	byOps := 0
	for k := range found {
		if strings.HasSuffix(k, " by ops") {
			byOps++
		}
	}
	if byOps < 2 { // pause on, pause off
		t.Errorf("the ledger lacks ops's pause and resume: %v", found)
	}
	verifyLedger(t, s)
}

// A zero-config start creates the admin user with its token in DataDir/api-token
// (0600), says where in the log, and never logs the token; the token works as admin.
func TestServiceZeroConfigAdmin(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Service.DataDir = t.TempDir()
	core, logs := observer.New(zapcore.DebugLevel)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		done <- service.Run(ctx, service.Options{Config: cfg, Playbooks: []playbooks.Source{playbooks.Shipped()},
			Log: zap.New(core), CheckpointEvery: time.Hour, Ready: func(h, _ string) { ready <- h }})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("service did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not start within 30s")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service exited with %v", err)
		}
	}()
	tf := filepath.Join(cfg.Service.DataDir, users.TokenFileName)
	raw, err := os.ReadFile(tf)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tf); fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s mode %v, want 0600", tf, fi.Mode().Perm())
	}
	token := strings.TrimSpace(string(raw))
	r := &running{http: addr}
	if code, b := r.apiAs(t, token, "POST", "/api/pause", `{"reason":"drill"}`); code != 200 || !bytes.Contains(b, []byte(`"paused_by": "admin"`)) {
		t.Fatalf("pause with the generated admin token: %d %s", code, b)
	}
	said := false
	for _, e := range logs.All() {
		line, _ := json.Marshal(map[string]any{"msg": e.Message, "fields": e.ContextMap()})
		if bytes.Contains(line, []byte(token)) || bytes.Contains(line, []byte(token[12:])) {
			t.Fatalf("the log holds the token: %s", line)
		}
		if e.Message == "no API users: created the admin user" && e.ContextMap()["token_file"] == tf {
			said = true
		}
	}
	if !said {
		t.Fatal("the log does not say where the admin's token is")
	}
	if b, _ := os.ReadFile(users.Path(cfg.Service.DataDir)); bytes.Contains(b, []byte(token)) {
		t.Fatal("the users file holds the token")
	}
}
