package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
)

const e2eToken = "e2e-api-token-0123456789abcdef"

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// killswitchBinary builds the binary once per test process.
func killswitchBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "killswitch-e2e-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "killswitch")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// e2eVendor is a vendor with real Vault tokens.
type e2eVendor struct {
	token, accessor string
}

// seedE2E creates, in a real Vault, a vendor token to steal and the service's own
// least-privilege token.
func seedE2E(t *testing.T, v *testharness.Vault) (vendor e2eVendor, service string) {
	t.Helper()
	ctx := context.Background()
	root := v.Client(t)
	if err := root.Sys().PutPolicyWithContext(ctx, "vendor-mailer", `path "secret/data/vendors/mailer/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"vendor-mailer"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	policy, err := vaultPolicy(killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
		"mailer-api": {Kind: killswitch.CredTokenAccessor, Accessor: sec.Auth.Accessor}}}})
	if err != nil {
		t.Fatal(err)
	}
	return e2eVendor{token: sec.Auth.ClientToken, accessor: sec.Auth.Accessor}, policyToken(t, root, "killswitch", policy)
}

// policyToken writes a policy and returns a fresh token holding only it.
func policyToken(t *testing.T, root *api.Client, name, rules string) string {
	t.Helper()
	ctx := context.Background()
	if err := root.Sys().PutPolicyWithContext(ctx, name, rules); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{name}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Auth.ClientToken
}

// svc is a running killswitch binary.
type svc struct {
	cmd      *exec.Cmd
	http     string
	natsURL  string
	logs     *strings.Builder
	logsMu   *sync.Mutex
	exited   chan error
	dataDir  string
	cfgPath  string
	env      []string
	natsPort int
	httpPort int
	args     []string // more flags for `run`
}

func writeE2EConfig(t *testing.T, dir string, accessor string, natsPort int) string {
	t.Helper()
	cfg := fmt.Sprintf(`
service:
  nats: {listen: "127.0.0.1:%d"}
vendors:
  mailer:
    owner: messaging
    caps: [{credential: mailer-api, bytes: 100MB, per: 1h}]
    credentials:
      mailer-api: {kind: token, accessor: %s}
`, natsPort, accessor)
	p := filepath.Join(dir, "killswitch.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func startService(t *testing.T, s *svc) {
	t.Helper()
	s.cmd = exec.Command(killswitchBinary(t), append([]string{"run", "--config", s.cfgPath, "--data-dir", s.dataDir,
		"--http", fmt.Sprintf("127.0.0.1:%d", s.httpPort), "--log-level", "debug"}, s.args...)...)
	s.cmd.Env = append(os.Environ(), s.env...)
	stderr, _ := s.cmd.StderrPipe()
	s.logs, s.logsMu, s.exited = &strings.Builder{}, &sync.Mutex{}, make(chan error, 1)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.logsMu.Lock()
			s.logs.WriteString(sc.Text() + "\n")
			s.logsMu.Unlock()
		}
		s.exited <- s.cmd.Wait()
	}()
	s.http = fmt.Sprintf("http://127.0.0.1:%d", s.httpPort)
	s.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", s.natsPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(s.http + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-s.exited:
			t.Fatalf("killswitch exited: %v\n%s", err, s.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("killswitch not ready in 30s\n%s", s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *svc) log() string {
	s.logsMu.Lock()
	defer s.logsMu.Unlock()
	return s.logs.String()
}

func (s *svc) api(t *testing.T, method, path, token, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, s.http+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type apiIncident struct {
	ID                    string   `json:"id"`
	Credential            string   `json:"credential"`
	State                 string   `json:"state"`
	ExposureWindowSeconds *float64 `json:"exposure_window_seconds"`
	Actions               []struct {
		Type   string `json:"type"`
		Status string `json:"status"`
	} `json:"actions"`
	Decisions []json.RawMessage `json:"decisions"`
}

func (s *svc) waitContained(t *testing.T) apiIncident {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last []byte
	for time.Now().Before(deadline) {
		code, b := s.api(t, "GET", "/api/incidents", e2eToken, "")
		last = b
		if code == 200 {
			var list struct{ Incidents []apiIncident }
			if err := json.Unmarshal(b, &list); err != nil {
				t.Fatal(err)
			}
			for _, in := range list.Incidents {
				if in.Credential == "mailer-api" && in.State == "contained" {
					return in
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no contained incident in 30s; last /api/incidents: %s\n%s", last, s.log())
	return apiIncident{}
}

func publishEvents(t *testing.T, s *svc, evs ...telemetry.Event) {
	t.Helper()
	nc, err := s.natsConn(t, "sensor")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{MsgID: telnats.ContentMsgID})
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if err := pub.Publish(context.Background(), &evs[i]); err != nil {
			t.Fatal(err)
		}
	}
}

func traffic(n int, bytes int64) []telemetry.Event {
	out := make([]telemetry.Event, n)
	now := time.Now().UTC()
	for i := range out {
		out[i] = telemetry.Event{Time: now.Add(time.Duration(i-n) * time.Millisecond), Vendor: "mailer",
			Credential: "mailer-api", Dst: "198.51.100.7", DstPort: 443, Bytes: bytes, Sensor: "gw-1"}
	}
	return out
}

func newService(t *testing.T, v *testharness.Vault) (*svc, e2eVendor) {
	vendor, ksToken := seedE2E(t, v)
	dir := t.TempDir()
	s := &svc{dataDir: filepath.Join(dir, "data"), natsPort: freePort(t), httpPort: freePort(t)}
	s.cfgPath = writeE2EConfig(t, dir, vendor.accessor, s.natsPort)
	s.env = []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + ksToken, "KILLSWITCH_API_TOKEN=" + e2eToken}
	return s, vendor
}

// The whole loop through the built binary: real embedded NATS, real dev Vault.
func TestRunEndToEnd(t *testing.T) {
	v := testharness.DevVault(t)
	s, vendor := newService(t, v)
	startService(t, s)
	defer func() { _ = s.cmd.Process.Signal(syscall.SIGTERM); <-s.exited }()

	// Normal traffic, under the 100 MB/h cap; then the breach: 300 MB through the token
	// in one burst (over twice the cap: critical).
	publishEvents(t, s, traffic(20, 1<<20)...)
	publishEvents(t, s, traffic(1, 300<<20)...)
	in := s.waitContained(t)
	if in.ExposureWindowSeconds == nil || len(in.Decisions) == 0 {
		t.Fatalf("incident %+v", in)
	}
	verified := false
	for _, a := range in.Actions {
		verified = verified || (a.Type == "vault.revoke_token_accessor" && a.Status == "verified")
	}
	if !verified {
		t.Fatalf("actions %+v", in.Actions)
	}
	// The stolen token is dead in Vault.
	stolen, _ := api.NewClient(&api.Config{Address: v.Addr})
	stolen.SetToken(vendor.token)
	if _, err := stolen.Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the vendor's token still works")
	}
	// The Vault token holds only the generated policy.
	var status struct {
		VaultTokenScope string `json:"vault_token_scope"`
	}
	if code, b := s.api(t, "GET", "/api/status", e2eToken, ""); code != 200 || json.Unmarshal(b, &status) != nil || status.VaultTokenScope != "scoped" {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	// The timeline through the API.
	code, b := s.api(t, "GET", "/api/incidents/"+in.ID, e2eToken, "")
	if code != 200 || !strings.Contains(string(b), `"contained_at"`) || !strings.Contains(string(b), `"first_anomalous_at"`) {
		t.Fatalf("incident timeline: %d %s", code, b)
	}
	// API auth.
	for _, tc := range []struct {
		method, path, token, body string
		code                      int
	}{
		{"GET", "/api/incidents", "", "", 401},
		{"GET", "/api/incidents", "wrong-token-wrong-token", "", 401},
		{"GET", "/metrics", "", "", 401},
		{"POST", "/api/actions/act-000000000000000000000000/approve", e2eToken, `{"comment":"x"}`, 404},
		{"GET", "/healthz", "", "", 200},
	} {
		if code, b := s.api(t, tc.method, tc.path, tc.token, tc.body); code != tc.code {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, code, b, tc.code)
		}
	}
	// Metrics show the exposure window.
	_, m := s.api(t, "GET", "/metrics", e2eToken, "")
	if !strings.Contains(string(m), "killswitch_exposure_window_seconds_count 1") ||
		!strings.Contains(string(m), `killswitch_actions_total{status="verified",type="vault.revoke_token_accessor"} 1`) {
		t.Fatalf("metrics:\n%s", grepLines(string(m), "killswitch_"))
	}
	// The ledger verifies.
	code, out, stderr := run(t, "ledger", "verify", "--nats", s.natsURL, "--data-dir", s.dataDir)
	if code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("ledger verify: %d %s %s", code, out, stderr)
	}
	// Graceful shutdown on SIGTERM.
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, s.log())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20s after SIGTERM")
	}
	s.exited <- nil
}

// kill -9 in the middle of the stream: after the restart nothing is lost and nothing
// is done twice.
func TestRunSurvivesKill9(t *testing.T) {
	v := testharness.DevVault(t)
	s, vendor := newService(t, v)
	startService(t, s)
	// 200 events of 1 MB with a 300 MB burst at the 51st (the cap is crossed by over
	// twice: critical).
	evs := traffic(201, 1<<20)
	evs[50].Bytes = 300 << 20
	publishEvents(t, s, evs...)
	// Kill as soon as the detection is stored: the response may be anywhere in flight.
	nc, err := s.natsConn(t, "service")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := js.Stream(context.Background(), "KILLSWITCH_DETECTIONS")
		if err == nil {
			if info, err := st.Info(context.Background()); err == nil && info.State.Msgs > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no detection\n%s", s.log())
		}
		time.Sleep(2 * time.Millisecond)
	}
	nc.Close()
	_ = s.cmd.Process.Kill()
	<-s.exited

	startService(t, s) // same data directory: the embedded NATS store, the checkpoint
	defer func() { _ = s.cmd.Process.Signal(syscall.SIGTERM); <-s.exited }()
	publishEvents(t, s, traffic(5, 1<<20)...)
	in := s.waitContained(t)
	stolen, _ := api.NewClient(&api.Config{Address: v.Addr})
	stolen.SetToken(vendor.token)
	if _, err := stolen.Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the vendor's token still works")
	}
	// Exactly one cap detection, one incident, and the revocation applied at most once.
	nc, _ = s.natsConn(t, "service")
	defer nc.Close()
	js, _ = jetstream.New(nc)
	st, _ := js.Stream(context.Background(), "KILLSWITCH_DETECTIONS")
	info, _ := st.Info(context.Background())
	caps := 0
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err == nil && strings.Contains(string(m.Data), `"detector":"cap"`) && strings.Contains(string(m.Data), `"credential":"mailer-api"`) {
			caps++
		}
	}
	if caps != 1 {
		t.Fatalf("%d cap detections for mailer-api, want exactly 1", caps)
	}
	lst, _ := js.Stream(context.Background(), "KILLSWITCH_LEDGER")
	linfo, _ := lst.Info(context.Background())
	applied := 0
	for seq := uint64(1); seq <= linfo.State.LastSeq; seq++ {
		m, err := lst.GetMsg(context.Background(), seq)
		if err == nil && strings.Contains(string(m.Data), `"/applied"`) && strings.Contains(string(m.Data), in.ID) {
			applied++
		}
	}
	if applied > 1 {
		t.Fatalf("the revocation was applied %d times", applied)
	}
	code, out, stderr := run(t, "ledger", "verify", "--nats", s.natsURL, "--data-dir", s.dataDir)
	if code != 0 {
		t.Fatalf("ledger verify after kill -9: %d %s %s", code, out, stderr)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A Vault token without what the inventory needs: the service refuses to start and says
// which capability is missing, before it touches anything.
func TestRunRefusesAWeakVaultToken(t *testing.T) {
	v := testharness.DevVault(t)
	root := v.Client(t)
	weak := policyToken(t, root, "weak", `path "auth/token/lookup-accessor" { capabilities = ["update"] }`)
	dir := t.TempDir()
	cfg := writeE2EConfig(t, dir, "some-accessor", freePort(t))
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", weak)
	code, _, stderr := run(t, "run", "--config", cfg, "--data-dir", filepath.Join(dir, "data"), "--http", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if code != 1 || !strings.Contains(stderr, "lacks capabilities") || !strings.Contains(stderr, "auth/token/revoke-accessor: needs update for mailer/mailer-api") {
		t.Fatalf("run with a weak token: exit %d\n%s", code, stderr)
	}
	if strings.Contains(stderr, weak) {
		t.Fatal("the error shows the token")
	}
}
