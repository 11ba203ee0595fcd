package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// natsConn connects to the service's NATS as role: "service", "operator", "automation"
// (the credentials `run` generated in its data directory) or "sensor" (minted once with
// `killswitch creds sensor`).
func (s *svc) natsConn(t testing.TB, role string) (*nats.Conn, error) {
	t.Helper()
	creds := embeddednats.CredsFile(s.dataDir, embeddednats.Role(role))
	if role == "sensor" {
		creds = filepath.Join(s.dataDir, "e2e-sensor.creds")
		if _, err := os.Stat(creds); err != nil {
			var out, errOut bytes.Buffer
			if code := dispatch(context.Background(), []string{"creds", "sensor", "e2e", "--data-dir", s.dataDir, "--out", creds}, &out, &errOut); code != 0 {
				t.Fatalf("creds sensor: exit %d: %s", code, errOut.String())
			}
		}
	}
	return natsconn.Options{URL: s.natsURL, CredsFile: creds, Name: "e2e-" + role}.Connect(zap.NewNop())
}

// TestRunNATSAuthorization runs the binary on its defaults and checks who may do what
// on its embedded NATS: anonymous clients are refused; a sensor minted with `creds
// sensor` publishes telemetry but cannot touch the ledger, the buckets or the
// JetStream API; automation subscribes to events only; `ledger verify` uses the data
// directory's operator identity.
func TestRunNATSAuthorization(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the binary")
	}
	dir := t.TempDir()
	s := &svc{dataDir: filepath.Join(dir, "data"), natsPort: freePort(t), httpPort: freePort(t), cfgPath: filepath.Join(dir, "killswitch.yaml"),
		env: []string{"VAULT_ADDR=", "KILLSWITCH_NATS_URL="}}
	cfg := fmt.Sprintf("service:\n  nats:\n    listen: 127.0.0.1:%d\n", s.natsPort)
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startService(t, s)
	defer func() { _ = s.cmd.Process.Signal(syscall.SIGTERM); <-s.exited }()

	for _, r := range []string{"service", "operator", "automation"} {
		st, err := os.Stat(embeddednats.CredsFile(s.dataDir, embeddednats.Role(r)))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s credentials: %v %v", r, st, err)
		}
		if !strings.Contains(s.log(), embeddednats.CredsFile(s.dataDir, embeddednats.Role(r))) {
			t.Errorf("the path of the %s credentials is not logged", r)
		}
	}
	if strings.Contains(s.log(), "SUA") || strings.Contains(s.log(), "BEGIN NATS USER JWT") {
		t.Fatal("a seed or a JWT is in the log")
	}
	if _, err := nats.Connect(s.natsURL); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous client: %v, want an authorization violation", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sensor, err := s.natsConn(t, "sensor")
	if err != nil {
		t.Fatal(err)
	}
	defer sensor.Close()
	publishEvents(t, s, traffic(2, 1<<10)...) // JetStream acks
	for _, subj := range []string{"killswitch.ledger", "$KV.killswitch_claims.x", "$JS.API.STREAM.DELETE.KILLSWITCH_LEDGER",
		"$JS.API.DIRECT.GET.KV_killswitch_incidents.$KV.killswitch_incidents.x"} {
		rctx, c := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := sensor.RequestWithContext(rctx, subj, []byte(`{}`))
		c()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("sensor request on %s: %v, want no answer", subj, err)
		}
	}
	js, _ := jetstream.New(sensor)
	rctx, c := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := js.KeyValue(rctx, "killswitch_incidents"); err == nil {
		t.Error("a sensor bound the incidents bucket")
	}
	c()

	svcNC, err := s.natsConn(t, "service")
	if err != nil {
		t.Fatal(err)
	}
	defer svcNC.Close()
	sjs, _ := jetstream.New(svcNC)
	st, err := sjs.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		t.Fatalf("the ledger stream: %v", err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Errorf("the ledger holds %v messages (%v), want none", info, err)
	}

	auto, err := s.natsConn(t, "automation")
	if err != nil {
		t.Fatal(err)
	}
	defer auto.Close()
	sub, err := auto.SubscribeSync("killswitch.events.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = auto.Flush()
	_ = svcNC.Publish("killswitch.events.test.x", []byte("{}"))
	if _, err := sub.NextMsg(2 * time.Second); err != nil {
		t.Errorf("automation did not get an event: %v", err)
	}
	ajs, _ := jetstream.New(auto)
	rctx, c = context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := ajs.Publish(rctx, "egress.mailer", []byte(`{}`)); err == nil {
		t.Error("automation published telemetry")
	}
	c()

	// ledger verify reads with the operator identity of --data-dir; seal writes with
	// the service's.
	if code, out, stderr := run(t, "ledger", "verify", "--nats", s.natsURL, "--data-dir", s.dataDir); code != 0 {
		t.Errorf("ledger verify: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, _, stderr := run(t, "ledger", "verify", "--nats", s.natsURL, "--no-key", "--data-dir", t.TempDir()); code == 0 ||
		!strings.Contains(stderr, "--nats-creds") {
		t.Errorf("ledger verify without credentials: exit %d, %s", code, stderr)
	}
	if code, out, stderr := run(t, "ledger", "seal", "--nats", s.natsURL, "--data-dir", s.dataDir, "--by", "ana"); code != 0 {
		t.Errorf("ledger seal: exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestCredsCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "gw.creds")
	for _, tc := range []struct {
		args     []string
		code     int
		contains string
	}{
		{[]string{"creds"}, 2, ""},
		{[]string{"creds", "bogus"}, 2, ""},
		{[]string{"creds", "sensor"}, 2, ""},
		{[]string{"creds", "sensor", "gw", "--vendor", "a.b", "--data-dir", dir}, 1, ""},
		{[]string{"creds", "sensor", "gw", "--vendor", "mailer", "--data-dir", dir, "--out", out}, 0, ""},
		{[]string{"creds", "sensor", "gw", "--data-dir", dir, "--out", out}, 1, ""}, // never overwrites
		{[]string{"creds", "sensor", "gw2", "--data-dir", dir}, 0, "BEGIN NATS USER JWT"},
		{[]string{"creds", "list", "--data-dir", dir}, 0, "gw2"},
		{[]string{"creds", "nats-config", "--data-dir", dir}, 0, "resolver_preload"},
		{[]string{"creds", "revoke", "gw", "--data-dir", dir}, 0, "revoked gw"},
		{[]string{"creds", "revoke", "nobody", "--data-dir", dir}, 1, ""},
	} {
		var o, e bytes.Buffer
		code := dispatch(context.Background(), tc.args, &o, &e)
		if code != tc.code || !strings.Contains(o.String(), tc.contains) {
			t.Errorf("%v: exit %d, want %d; stdout %q; stderr %s", tc.args, code, tc.code, o.String(), e.String())
		}
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", out, st, err)
	}
	p, err := natsconn.InboxPrefix(out)
	if err != nil || p != embeddednats.SensorInboxPrefix {
		t.Fatalf("sensor inbox prefix %q %v", p, err)
	}
	for _, r := range embeddednats.StandardRoles() {
		if _, err := os.Stat(embeddednats.CredsFile(dir, r)); err != nil {
			t.Errorf("nats-config did not write the %s credentials: %v", r, err)
		}
	}
}

// TestRunExternalNATS installs deploy/nats.conf with the authorization `creds
// nats-config` prints into a real nats-server, then runs the binary against it: it
// connects with the data directory's service credentials; with a sensor's it refuses to
// start and says why.
func TestRunExternalNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the binary")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	var authConf, errOut bytes.Buffer
	if code := dispatch(context.Background(), []string{"creds", "nats-config", "--data-dir", data}, &authConf, &errOut); code != 0 {
		t.Fatalf("nats-config: %s", errOut.String())
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.MkdirAll(filepath.Join(dir, "auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth", "auth.conf"), authConf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("deploy/nats.conf with the generated authorization: %v", err)
	}
	if len(opts.TrustedOperators) != 1 || opts.SystemAccount == "" {
		t.Fatalf("deploy/nats.conf does not trust the operator: %+v", opts.TrustedOperators)
	}
	opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir, opts.NoSigs = "127.0.0.1", freePort(t), 0, filepath.Join(dir, "js"), true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	if _, err := nats.Connect(ns.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous client: %v", err)
	}
	cfgPath := filepath.Join(dir, "killswitch.yaml")
	if err := os.WriteFile(cfgPath, []byte("service:\n  nats:\n    url: "+ns.ClientURL()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sensor := filepath.Join(dir, "sensor.creds")
	if code := dispatch(context.Background(), []string{"creds", "sensor", "s", "--data-dir", data, "--out", sensor}, &authConf, &errOut); code != 0 {
		t.Fatal(errOut.String())
	}
	cmd := exec.Command(killswitchBinary(t), "run", "--config", cfgPath, "--data-dir", data, "--http", "127.0.0.1:0", "--nats-creds", sensor)
	cmd.Env = append(os.Environ(), "VAULT_ADDR=", "KILLSWITCH_NATS_URL=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not permitted") || !strings.Contains(string(out), "creds nats-config") {
		t.Fatalf("run with a sensor identity: %v\n%s", err, out)
	}
	s := &svc{dataDir: data, cfgPath: cfgPath, httpPort: freePort(t), env: []string{"VAULT_ADDR=", "KILLSWITCH_NATS_URL="}}
	startService(t, s)
	defer func() { _ = s.cmd.Process.Signal(syscall.SIGTERM); <-s.exited }()
	s.natsURL = ns.ClientURL()
	publishEvents(t, s, traffic(2, 1<<10)...)
}

// natsConfWithAuth copies the NATS configuration file conf next to the authorization
// `creds nats-config` writes (auth/auth.conf, as the compose file mounts it) and
// returns the copy's path.
func natsConfWithAuth(t *testing.T, conf string) string {
	t.Helper()
	dir := t.TempDir()
	var auth, errOut bytes.Buffer
	if code := dispatch(context.Background(), []string{"creds", "nats-config", "--data-dir", filepath.Join(dir, "data")}, &auth, &errOut); code != 0 {
		t.Fatalf("creds nats-config: %s", errOut.String())
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth", "auth.conf"), auth.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
