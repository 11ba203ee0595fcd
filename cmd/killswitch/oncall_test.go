package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/killswitch-dev/killswitch/users"
	"go.uber.org/zap"
)

// The on-call commands against a real service in process (its embedded NATS, the real
// dev Vault): status, incidents, pause and resume; a held revocation approved with
// approve; a veto window listed by approvals and vetoed with veto (a viewer's veto
// exits 3); the documented exit codes for 401, 403, 404, 409 and an unreachable API;
// --json for scripts; --help exits 0.
func TestOnCallCommands(t *testing.T) {
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	inv, toks := map[string]string{}, map[string]string{}
	for _, name := range []string{"mailer", "crm"} {
		sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		inv[name], toks[name] = sec.Auth.Accessor, sec.Auth.ClientToken
	}
	var yml strings.Builder
	yml.WriteString("vendors:\n")
	for name, acc := range inv {
		fmt.Fprintf(&yml, "  %s:\n    caps: [{credential: %s-api, bytes: 1MB, per: 1h}]\n    credentials:\n      %s-api: {kind: token, accessor: %s}\n", name, name, name, acc)
	}
	cfg, err := config.Parse(strings.NewReader(yml.String()))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	dir := t.TempDir()
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen, cfg.Service.DataDir = "127.0.0.1:0", "127.0.0.1:0", dir
	pbDir := t.TempDir()
	rego, err := os.ReadFile("../../playbooks/testdata/veto_window/killswitch/playbooks/veto_window.rego")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pbDir, "veto_window.rego"), bytes.Replace(rego, []byte(`"90s"`), []byte(`"10m"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	addrs := runService(t, service.Options{Config: cfg, Playbooks: []playbooks.Source{playbooks.DirSource(pbDir)},
		VaultExecutors: vault.New(root), APIToken: "oncall-admin-token-0123456789", Log: zap.NewNop(),
		TickEvery: 100 * time.Millisecond, CheckpointEvery: time.Hour, EvalTimeout: time.Minute})
	apiURL := "http://" + addrs[0]
	store := users.Open(users.Path(dir), users.Options{})
	tokFile := map[string]string{}
	for name, role := range map[string]users.Role{"val": users.Viewer, "ana": users.Approver, "ops": users.Admin} {
		_, tok, err := store.Add(ctx, name, role)
		if err != nil {
			t.Fatal(err)
		}
		tokFile[name] = filepath.Join(dir, name+".token")
		if err := os.WriteFile(tokFile[name], []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ks := func(who string, args ...string) (int, string, string) {
		t.Helper()
		if who != "" {
			args = append(args, "--token-file", tokFile[who])
		}
		var out, errOut bytes.Buffer
		code := dispatch(ctx, append(args, "--api", apiURL), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	nc, err := natsconn.Options{URL: addrs[1], CredsFile: embeddednats.CredsFile(dir, embeddednats.RoleService), Name: "oncall-test"}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cross := func(vendor string) {
		ev := telemetry.Event{Time: time.Now().UTC(), Vendor: vendor, Credential: vendor + "-api", Dst: "203.0.113.9", DstPort: 443, Bytes: 3 << 20, Sensor: "gw-1"}
		if err := pub.Publish(ctx, &ev); err != nil {
			t.Fatal(err)
		}
	}
	alive := func(vendor string) bool {
		c, err := api.NewClient(&api.Config{Address: v.Addr})
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(toks[vendor])
		_, err = c.Auth().Token().LookupSelf()
		return err == nil
	}
	eventually := func(what string, f func() bool) {
		t.Helper()
		for end := time.Now().Add(time.Minute); !f(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	pending := func() httpapi.Pending {
		t.Helper()
		code, out, errOut := ks("val", "approvals", "--json")
		var p httpapi.Pending
		if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
			t.Fatalf("approvals --json: %d %s %s", code, out, errOut)
		}
		return p
	}

	for _, c := range []struct {
		who  string
		args []string
		code int
		out  string // in stdout, or in stderr when code != 0
	}{
		{"val", []string{"status"}, 0, "0 approvals, 0 veto windows"},
		{"val", []string{"incidents"}, 0, "no incidents"},
		{"val", []string{"incidents", "list", "--json"}, 0, `"incidents": []`},
		{"", []string{"status"}, exitAuth, "not authenticated: no token"},
		{"val", []string{"pause"}, exitAuth, "forbidden by your role: POST /api/pause needs the admin role; val has the viewer role"},
		{"val", []string{"incidents", "show", "inc-nope"}, exitNotFound, "not found"},
		{"ana", []string{"approve", "act-nope"}, exitNotFound, "not found"},
		{"ops", []string{"pause", "--reason", "drill"}, 0, "paused by ops"},
	} {
		code, out, errOut := ks(c.who, c.args...)
		got := out
		if c.code != 0 {
			got = errOut
		}
		if code != c.code || !strings.Contains(got, c.out) || (c.code != 0 && strings.Count(strings.TrimSpace(errOut), "\n") != 0) {
			t.Fatalf("killswitch %v as %q: exit %d\n%s%s\nwant exit %d and one line with %q", c.args, c.who, code, out, errOut, c.code, c.out)
		}
	}
	// Paused: mailer's revocation is held for an approval.
	cross("mailer")
	var held httpapi.PendingAction
	eventually("mailer's revocation held", func() bool {
		p := pending()
		if len(p.Approvals) == 1 {
			held = p.Approvals[0]
		}
		return held.ID != ""
	})
	if code, out, _ := ks("ops", "resume"); code != 0 || !strings.Contains(out, "automation running") {
		t.Fatalf("resume: %d %s", code, out)
	}
	// crm: announced in a veto window.
	cross("crm")
	var window httpapi.PendingAction
	eventually("crm's veto window", func() bool {
		p := pending()
		if len(p.VetoWindows) == 1 {
			window = p.VetoWindows[0]
		}
		return window.ID != ""
	})
	code, out, _ := ks("val", "approvals")
	if code != 0 || !strings.Contains(out, window.ID) || !strings.Contains(out, held.ID) || !strings.Contains(out, "RUNS AT") {
		t.Fatalf("approvals: %d\n%s", code, out)
	}
	for _, c := range []struct {
		who  string
		args []string
		code int
		out  string
	}{
		{"val", []string{"veto", window.ID}, exitAuth, "needs the approver role"},
		{"ana", []string{"veto", window.ID, "--comment", "planned export"}, 0, "vetoed " + window.ID},
		{"ana", []string{"veto", window.ID}, exitConflict, "already vetoed by ana"},
		{"ana", []string{"approve", window.ID}, exitConflict, "too late or already done"},
		{"ana", []string{"approve", held.ID, "--comment", "confirmed"}, 0, "approved " + held.ID},
		{"ana", []string{"reject", held.ID}, exitConflict, "too late or already done"},
	} {
		code, out, errOut := ks(c.who, c.args...)
		got := out
		if c.code != 0 {
			got = errOut
		}
		if code != c.code || !strings.Contains(got, c.out) {
			t.Fatalf("killswitch %v as %s: exit %d\n%s%s\nwant exit %d with %q", c.args, c.who, code, out, errOut, c.code, c.out)
		}
	}
	if alive("mailer") || !alive("crm") {
		t.Fatalf("after approve and veto: mailer alive %v (want dead), crm alive %v (want alive)", alive("mailer"), alive("crm"))
	}
	code, out, _ = ks("val", "incidents")
	if code != 0 || !strings.Contains(out, "mailer") || !strings.Contains(out, "vetoed") {
		t.Fatalf("incidents: %d\n%s", code, out)
	}
	code, out, _ = ks("val", "incidents", "show", held.Incident)
	if code != 0 || !strings.Contains(out, "exposure window") || !strings.Contains(out, "verified") {
		t.Fatalf("incidents show: %d\n%s", code, out)
	}
	if code, _, errOut := dispatch3(ctx, "status", "--api", "http://127.0.0.1:1", "--timeout", "2s"); code != exitFailed || !strings.Contains(errOut, "cannot reach the API") {
		t.Fatalf("unreachable API: %d %s", code, errOut)
	}
	for _, cmd := range []string{"incidents", "approvals", "approve", "reject", "veto", "pause", "resume", "status"} {
		if code, out, _ := dispatch3(ctx, cmd, "--help"); code != 0 || !strings.Contains(out, "Exit codes") {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, out)
		}
	}
}

// dispatch3 runs the command line args and returns its exit code, stdout and stderr.
func dispatch3(ctx context.Context, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := dispatch(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// runService runs the service in process until the test ends and returns its API and
// NATS addresses.
func runService(t *testing.T, o service.Options) [2]string {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan [2]string, 1)
	o.Ready = func(h, n string) { ready <- [2]string{h, n} }
	go func() { done <- service.Run(runCtx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service: %v", err)
		}
	})
	select {
	case addrs := <-ready:
		return addrs
	case err := <-done:
		t.Fatalf("service did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not start")
	}
	return [2]string{}
}
