package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/killswitch-dev/killswitch/users"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// EnvScreenshots names a directory: the browser test saves the console's screenshots
// there (scripts/screenshots sets it to docs/).
const EnvScreenshots = "KS_SCREENSHOTS"

// chromium returns the path of a Chromium to drive; without one the test fails under
// CI=true (scripts/test installs it) and is skipped elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH: scripts/test installs it (apt-get install -y chromium)")
	}
	t.Skip("no chromium on PATH (skipping; set CI=true to make this a failure; apt-get install -y chromium)")
	return ""
}

// vaultRig is the dev Vault with one stolen token per vendor and the executors on a
// token holding the inventory's least-privilege policy.
type vaultRig struct {
	v      *testharness.Vault
	execs  actions.Registry
	cfg    string
	tokens map[string]string
}

func newVaultRig(t *testing.T, vendors ...string) *vaultRig {
	t.Helper()
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	r := &vaultRig{v: v, tokens: map[string]string{}}
	var b strings.Builder
	b.WriteString("actions: {budget: 1000, vendor_budget: 10}\nvendors:\n")
	for _, name := range vendors {
		sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		r.tokens[name] = sec.Auth.ClientToken
		fmt.Fprintf(&b, "  %s:\n    caps: [{credential: %s-api, bytes: 1MB, per: 1h}]\n    credentials:\n      %s-api: {kind: token, accessor: %s}\n",
			name, name, name, sec.Auth.Accessor)
	}
	r.cfg = b.String()
	cfg, err := config.Parse(strings.NewReader(r.cfg))
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
	r.execs = vault.New(client)
	return r
}

// alive reports whether a vendor's stolen token still works.
func (r *vaultRig) alive(t *testing.T, vendor string) bool {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: r.v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(r.tokens[vendor])
	_, err = c.Auth().Token().LookupSelf()
	return err == nil
}

// startService runs the real service in process (embedded NATS, the dev Vault) with the
// console test playbook, and returns its HTTP address and a NATS connection.
func startService(t *testing.T, rig *vaultRig, dir string) (string, *nats.Conn) {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader(rig.cfg))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen, cfg.Service.DataDir = "127.0.0.1:0", "127.0.0.1:0", dir
	ctx, cancel := context.WithCancel(context.Background())
	done, ready := make(chan error, 1), make(chan struct{})
	var httpAddr, natsURL string
	go func() {
		done <- service.Run(ctx, service.Options{
			Config: cfg, Playbooks: []playbooks.Source{playbooks.DirSource(filepath.Join("testdata", "playbooks"))},
			VaultExecutors: rig.execs, APIToken: "console-test-admin-token-0123456789",
			Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), CheckpointEvery: time.Hour, TickEvery: 100 * time.Millisecond,
			EvalTimeout: time.Minute, Ready: func(h, n string) { httpAddr, natsURL = h, n; close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("service did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not start within 30s")
	}
	nc, err := natsconn.Options{URL: natsURL, CredsFile: embeddednats.CredsFile(dir, embeddednats.RoleService), Name: "console-test"}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nc.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("service exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("service did not stop within 30s")
		}
	})
	return "http://" + httpAddr, nc
}

// crossing is an event three times over a 1 MB cap.
func crossing(vendor string) *telemetry.Event {
	return &telemetry.Event{Time: time.Now().UTC(), Vendor: vendor, Credential: vendor + "-api", Dst: "203.0.113.9", DstPort: 443,
		Bytes: 3 << 20, Records: 10, Sensor: "gw-1"}
}

// The console in a real browser (headless Chromium) on the real service and the real
// dev Vault: a viewer logs in, watches an incident appear live, sees the held action
// without buttons and is answered 403 when it posts anyway; an approver approves it
// and sees it verified (the stolen token is dead), then vetoes a veto window (the
// token lives).
func TestConsoleInBrowser(t *testing.T) {
	exe := chromium(t)
	began := time.Now()
	rig := newVaultRig(t, "mailer", "crm", "erp")
	dir := t.TempDir()
	base, nc := startService(t, rig, dir)
	store := users.Open(users.Path(dir), users.Options{})
	tok := map[string]string{}
	for name, role := range map[string]users.Role{"val": users.Viewer, "ana": users.Approver} {
		_, secret, err := store.Add(context.Background(), name, role)
		if err != nil {
			t.Fatal(err)
		}
		tok[name] = secret
	}
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(ev *telemetry.Event) {
		t.Helper()
		if err := pub.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	seen, err := nc.SubscribeSync("killswitch.events.incident.mailer")
	if err != nil {
		t.Fatal(err)
	}

	setup := time.Since(began)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.NoSandbox, chromedp.ExecPath(exe), chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	// The first step starts the browser: no timeout on its context.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/ui/")); err != nil {
		t.Fatal(err)
	}
	browserUp := time.Since(began) - setup
	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(js string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		out, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		return out
	}
	poll := func(what, js string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(10*time.Millisecond))); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
	// click clicks in one go in the page: a live refresh may swap the content between a
	// node lookup and a click of the protocol's.
	click := func(sel string) {
		t.Helper()
		if eval(`(function () { var b = document.querySelector('`+sel+`'); if (!b) { return 'none'; } b.click(); return 'ok'; })()`) != "ok" {
			t.Fatalf("no %s to click", sel)
		}
	}
	login := func(name string) {
		t.Helper()
		step("log in as "+name, chromedp.Navigate(base+"/ui/login"), chromedp.WaitVisible("#token"),
			chromedp.SendKeys("#token", tok[name]), chromedp.Click("#login"),
			chromedp.WaitVisible("#user"))
		if got := eval(`document.getElementById('user').textContent`); got != name {
			t.Fatalf("logged in as %q, want %q", got, name)
		}
		poll("the live stream", `document.body.getAttribute('data-live-state') === 'open'`)
	}
	shot := func(name string) {
		t.Helper()
		d := os.Getenv(EnvScreenshots)
		if d == "" {
			return
		}
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(d, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// 1. The viewer watches the incident appear live.
	login("val")
	if eval(`document.getElementById('no-incidents') ? 'empty' : 'rows'`) != "empty" {
		t.Fatal("incidents listed before any telemetry")
	}
	published := time.Now()
	publish(crossing("mailer"))
	m, err := seen.NextMsg(30 * time.Second)
	if err != nil {
		t.Fatalf("no incident event on NATS: %v", err)
	}
	onNATS := time.Now()
	poll("the mailer incident in the list", `!!document.querySelector('tr.incident[data-vendor="mailer"]')`)
	inDOM := time.Now()
	var inc struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(m.Data, &inc); err != nil || inc.ID == "" {
		t.Fatalf("incident event %s", m.Data)
	}
	got := eval(`(function () { var e = window.ksEvents.find(function (e) { return e.kind === 'incident' && e.vendor === 'mailer'; });
		return e ? e.at + ' ' + e.received : ''; })()`)
	var relayedMS, recvMS int64
	if _, err := fmt.Sscan(got, &relayedMS, &recvMS); err != nil || recvMS == 0 {
		t.Fatalf("the browser got no incident event: %q", got)
	}
	t.Logf("SSE latency: event on NATS → in the browser %v (console relayed it after %v); telemetry published → row in the page %v",
		time.UnixMilli(recvMS).Sub(onNATS), time.UnixMilli(relayedMS).Sub(onNATS), inDOM.Sub(published))

	// 2. The viewer sees the held action, no button, and is refused when it posts anyway.
	step("approvals as a viewer", chromedp.Navigate(base+"/ui/approvals"), chromedp.WaitVisible("#approvals"))
	actionID := eval(`document.querySelector('#approvals tr[data-action]').getAttribute('data-action')`)
	if n := eval(`String(document.querySelectorAll('form[action*="/actions/"], button.approve, button.veto').length)`); n != "0" {
		t.Fatalf("a viewer sees %s action buttons", n)
	}
	code := eval(`(async function () {
		var r = await fetch('/ui/actions/` + actionID + `/approve', {method: 'POST', credentials: 'same-origin',
			headers: {'X-CSRF-Token': document.querySelector('meta[name="csrf-token"]').content}});
		return String(r.status);
	})()`)
	if code != "403" {
		t.Fatalf("a viewer's approval: %s, want 403", code)
	}
	step("log out", chromedp.Click(`form[action="/ui/logout"] button`), chromedp.WaitVisible("#token"))

	// 3. The approver approves it on the incident page and sees it verified.
	login("ana")
	step("the incident page", chromedp.Navigate(base+"/ui/incidents/"+inc.ID),
		chromedp.WaitVisible(`form[action="/ui/actions/`+actionID+`/approve"] button`))
	if !rig.alive(t, "mailer") {
		t.Fatal("revoked before the approval")
	}
	click(`form[action="/ui/actions/` + actionID + `/approve"] button`)
	poll("the action verified on the page", `!!document.querySelector('#actions tr[data-action="`+actionID+`"][data-status="verified"]') && document.getElementById('state').textContent === 'contained'`)
	if rig.alive(t, "mailer") {
		t.Fatal("the page says verified but the stolen token still works")
	}
	if eval(`document.getElementById('chart') ? 'chart' : 'none'`) != "chart" {
		t.Fatalf("no volume chart: %s", eval(`(document.getElementById('chart-note') || {}).textContent || ''`))
	}
	shot("console-incident.png")

	// 4. A veto window appears live on the approvals page; the approver vetoes it.
	step("approvals", chromedp.Navigate(base+"/ui/approvals"), chromedp.WaitVisible("#no-windows"))
	publish(crossing("crm"))
	publish(crossing("erp"))
	poll("crm's veto window and erp's approval", `!!document.querySelector('#veto-windows button.veto') && !!document.querySelector('#approvals button.approve')`)
	if c := eval(`document.querySelector('#veto-windows .countdown').textContent`); !strings.HasSuffix(c, " s") {
		t.Fatalf("countdown %q", c)
	}
	shot("console-approvals.png")
	click(`#veto-windows button.veto`)
	poll("the window gone", `!!document.getElementById('no-windows')`)
	if !rig.alive(t, "crm") {
		t.Fatal("a vetoed revocation ran")
	}
	step("crm's incident", chromedp.Navigate(base+"/ui/?vendor=crm"), chromedp.WaitVisible(`tr.incident[data-vendor="crm"] a`),
		chromedp.Click(`tr.incident[data-vendor="crm"] a`), chromedp.WaitVisible("#actions"))
	if s := eval(`document.querySelector('#actions tr[data-action]').getAttribute('data-status')`); s != "vetoed" {
		t.Fatalf("crm's action is %q, want vetoed", s)
	}
	t.Logf("dev Vault and service started in %v, browser in %v, the browser steps took %v (whole test %v)",
		setup, browserUp, time.Since(began)-setup-browserUp, time.Since(began))
}
