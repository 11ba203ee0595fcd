package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/users"
	"go.uber.org/zap"
)

// kill-vendor, kills and restore against a real service in process and the dev Vault:
// --plan shows the whole plan and changes nothing; without --yes nothing is ordered
// (exit 2); a viewer may not order (exit 3); ordered, the seeded vendor's tokens,
// secret-ids and KV versions are all cut and kills lists it; restore prints the wrapping
// tokens once and the entity's tokens work again.
func TestKillCommands(t *testing.T) {
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	seeded := testharness.SeedVendor(t, root, nil, "mailer")
	cfg, err := config.Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Vendors = killswitch.Inventory{"mailer": seeded.Vendor}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	dir := t.TempDir()
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen, cfg.Service.DataDir = "127.0.0.1:0", "127.0.0.1:0", dir
	addrs := runService(t, service.Options{Config: cfg, Playbooks: []playbooks.Source{playbooks.Shipped()},
		VaultExecutors: vault.New(root), VaultClient: root, APIToken: "kill-admin-token-0123456789", Log: zap.NewNop(),
		CheckpointEvery: time.Hour, EvalTimeout: time.Minute})
	store := users.Open(users.Path(dir), users.Options{})
	tokFile := map[string]string{}
	for name, role := range map[string]users.Role{"val": users.Viewer, "ops": users.Admin} {
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
		var out, errOut bytes.Buffer
		code := dispatch(ctx, append(args, "--api", "http://"+addrs[0], "--token-file", tokFile[who]), &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := ks("ops", "kill-vendor", "mailer", "--plan")
	if code != 0 || !strings.Contains(out, "entity:mailer") || !strings.Contains(out, "vault.disable_entity") || !strings.Contains(out, "mailer-api") {
		t.Fatalf("--plan: %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = ks("ops", "kill-vendor", "mailer", "--reason", "breached"); code != exitUsage || !strings.Contains(errOut, "--yes") {
		t.Fatalf("without --yes: %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut = ks("val", "kill-vendor", "mailer", "--reason", "breached", "--yes"); code != 3 {
		t.Fatalf("viewer: %d %s", code, errOut)
	}
	if err := seeded.Untouched(seeded.State(t)); err != nil {
		t.Fatalf("nothing was ordered, yet: %v", err)
	}
	if code, out, errOut = ks("ops", "kill-vendor", "mailer", "--reason", "breached", "--yes"); code != 0 || !strings.Contains(out, " done ") {
		t.Fatalf("kill: %d\n%s%s", code, out, errOut)
	}
	if err := seeded.Killed(seeded.State(t)); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = ks("val", "kills")
	if code != 0 || !strings.Contains(out, "mailer") || !strings.Contains(out, "done") {
		t.Fatalf("kills: %d\n%s%s", code, out, errOut)
	}
	incident := ""
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "inc-") {
			incident = f
		}
	}
	order := ""
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "kill-") {
			order = f
		}
	}
	if code, out, errOut = ks("val", "kills", "show", order); code != 0 || !strings.Contains(out, "Plan to cut mailer off") {
		t.Fatalf("kills show %s: %d\n%s%s", order, code, out, errOut)
	}
	if code, _, _ = ks("ops", "restore", incident); code != exitUsage {
		t.Fatalf("restore without a reason: %d", code)
	}
	code, out, errOut = ks("ops", "restore", incident, "--reason", "test keys")
	if code != 0 || !strings.Contains(out, "shown only now") || !strings.Contains(out, "stays_dead") {
		t.Fatalf("restore: %d\n%s%s", code, out, errOut)
	}
	st := seeded.State(t)
	if st.EntityDisabled || st.Tokens[1] != nil {
		t.Fatalf("after restore: entity disabled %v, an unlisted token of the entity: %v", st.EntityDisabled, st.Tokens[1])
	}
}

// A 421 naming the owner's API (a cluster instance that does not own the vendor) is
// followed once, with the same token; a 421 without one is an error.
func TestClientFollowsMisdirected(t *testing.T) {
	var got []string
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, "owner "+r.URL.Path+" "+r.Header.Get("Authorization"))
		_, _ = io.WriteString(w, `{"id":"kill-1","state":"done"}`)
	}))
	defer owner.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, "other "+r.URL.Path)
		w.WriteHeader(http.StatusMisdirectedRequest)
		_, _ = io.WriteString(w, `{"error":"another instance owns the vendor","api":"`+owner.URL+`"}`)
	}))
	defer other.Close()
	c := &apiClient{base: other.URL, token: "tok", timeout: 5 * time.Second, http: http.DefaultClient}
	var o pipeline.KillOrder
	if err := c.do(context.Background(), "POST", "/api/vendors/mailer/kill", map[string]string{"reason": "x"}, &o, nil); err != nil || o.State != pipeline.KillDone {
		t.Fatalf("followed: %v %+v", err, o)
	}
	if want := []string{"other /api/vendors/mailer/kill", "owner /api/vendors/mailer/kill Bearer tok"}; !slices.Equal(got, want) {
		t.Fatalf("requests %q, want %q", got, want)
	}
	lost := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusMisdirectedRequest)
		_, _ = io.WriteString(w, `{"error":"no owner"}`)
	}))
	defer lost.Close()
	c.base = lost.URL
	if err := c.do(context.Background(), "POST", "/api/vendors/mailer/kill", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "421") {
		t.Fatalf("a 421 without an owner: %v", err)
	}
}

// `status` shows a ledger whose appends fail: since when, how many, the server's reason.
func TestStatusShowsFailingAppends(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/status":
			_, _ = io.WriteString(w, `{"mode":"enforce","ledger":{"integrity":"ok","head_seq":7,"breaks_seen":0,"appends":"failing",`+
				`"failing_since":"2026-02-05T10:00:00Z","failed_appends":3,"last_failure":"nats: message size exceeds maximum allowed"}}`)
		default:
			_, _ = io.WriteString(w, `{"approvals":[],"veto_windows":[]}`)
		}
	}))
	defer api.Close()
	t.Setenv(config.EnvAPIToken, "tok")
	code, out, errOut := dispatch3(context.Background(), "status", "--api", api.URL)
	if code != exitOK || !strings.Contains(out, "FAILING since 2026-02-05T10:00:00Z: 3 entries not stored; last error: nats: message size exceeds maximum allowed") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
}
