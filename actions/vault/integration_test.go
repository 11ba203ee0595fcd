package vault_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/natskv"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/nats-io/nats.go/jetstream"
)

// counted wraps a real executor and counts the Apply calls that reached Vault.
type counted struct {
	actions.Executor
	applies atomic.Int32
}

func (c *counted) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	c.applies.Add(1)
	return c.Executor.Apply(ctx, t)
}

// runnerRig is the guard rails in front of the real Vault executors.
type runnerRig struct {
	e      *env
	runner *actions.Runner
	led    *ledger.Memory
	exec   *counted
	inv    killswitch.Inventory
	clk    *clock.Manual
}

type rigOpts struct {
	cfg      actions.Settings
	store    actions.Store
	instance string
	sleep    func(context.Context, time.Duration) error
	exec     *counted
}

func newRunnerRig(t testing.TB, e *env, inv killswitch.Inventory, o rigOpts) *runnerRig {
	t.Helper()
	if o.store == nil {
		o.store = actions.NewMemoryStore()
	}
	if o.exec == nil {
		o.exec = &counted{Executor: e.execs[killswitch.ActionRevokeTokenAccessor]}
	}
	if o.sleep == nil {
		o.sleep = func(context.Context, time.Duration) error { return nil }
	}
	r := &runnerRig{e: e, led: ledger.NewMemory(), exec: o.exec, inv: inv, clk: clock.NewManual(time.Now())}
	var err error
	r.runner, err = actions.New(o.cfg, actions.Deps{
		Store: o.store, Ledger: r.led, Inventory: inv, Clock: r.clk, Instance: o.instance, Sleep: o.sleep,
		Executors: actions.Registry{killswitch.ActionRevokeTokenAccessor: o.exec}, Fingerprint: fp,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tokens creates n vendors with a real token each ("api") and a protected one ("root").
func (e *env) tokens(t testing.TB, n int) (killswitch.Inventory, map[string]string) {
	t.Helper()
	inv, secret := killswitch.Inventory{}, map[string]string{}
	for i := range n {
		v := fmt.Sprintf("v%02d", i)
		creds := map[string]killswitch.Credential{}
		for _, name := range []string{"api", "root"} {
			tok, acc := e.vendorToken(t)
			creds[name] = killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc, Protected: name == "root"}
			secret[v+"/"+name] = tok
		}
		inv[v] = killswitch.Vendor{Credentials: creds}
	}
	return inv, secret
}

func (r *runnerRig) act(t testing.TB, vendor, incident string, credential string) incidents.ActionRef {
	t.Helper()
	v := r.inv[vendor]
	a := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: credential, Mode: killswitch.ModeEnforce}
	refs, err := r.runner.Act(context.Background(), actions.Request{
		Incident: &incidents.Incident{ID: incident, Vendor: vendor, Credential: credential},
		Result:   playbooks.Result{ID: "dec-" + incident, Decision: playbooks.Decision{Actions: []playbooks.Action{a}, Reason: "critical exfiltration"}},
		Vendor:   &v,
	})
	if err != nil {
		t.Fatalf("act: %v", err)
	}
	return refs[0]
}

// alive reports whether a vendor token still works against the real Vault.
func (e *env) alive(t testing.TB, token string) bool {
	t.Helper()
	c := e.v.Client(t)
	c.SetToken(token)
	_, err := c.Auth().Token().LookupSelf()
	return err == nil
}

// stages counts the ledger's action records by stage.
func (r *runnerRig) stages(t testing.TB) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, rec := range r.led.Records() {
		if rec.Type != ledger.TypeAction {
			continue
		}
		var ev actions.Event
		if err := json.Unmarshal(rec.Payload, &ev); err != nil {
			t.Fatal(err)
		}
		n[ev.Stage]++
	}
	return n
}

func TestRunnerBudgetAgainstVault(t *testing.T) {
	e := newEnv(t)
	inv, secret := e.tokens(t, 20)
	r := newRunnerRig(t, e, inv, rigOpts{cfg: actions.Settings{Budget: 3, VendorBudget: 100}})
	counts := map[incidents.ActionStatus]int{}
	var vendors []string
	for v := range inv {
		vendors = append(vendors, v)
	}
	slices.Sort(vendors)
	for i, v := range vendors {
		counts[r.act(t, v, fmt.Sprintf("inc-%d", i), "api").Status]++
	}
	if counts[incidents.ActionVerified] != 3 || counts[incidents.ActionHeld] != 17 {
		t.Fatalf("statuses %v, want 3 verified and 17 held", counts)
	}
	st, err := r.runner.Control().Status(context.Background())
	if err != nil || !st.Breaker.On {
		t.Fatalf("breaker not open: %+v, %v", st, err)
	}
	dead := 0
	for i, v := range vendors {
		if !e.alive(t, secret[v+"/api"]) {
			dead++
			if i >= 3 {
				t.Errorf("%s was revoked beyond the budget", v)
			}
		}
	}
	if dead != 3 {
		t.Fatalf("%d tokens dead in Vault, want 3", dead)
	}
	if s := r.stages(t); s["held"] != 17 || s["intent"] != 3 || s["verified"] != 3 {
		t.Fatalf("ledger stages %v", s)
	}
	// Protected credentials are never touched, whatever the playbook asks.
	if ref := r.act(t, vendors[0], "inc-protected", "root"); ref.Status != incidents.ActionSkipped {
		t.Fatalf("protected credential: %+v", ref)
	}
	if !e.alive(t, secret[vendors[0]+"/root"]) {
		t.Fatal("the protected token was revoked")
	}
}

func TestRunnerIdempotencyAgainstVault(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	srv := testharness.NATS(t)
	js, err := jetstream.New(testharness.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	store, err := natskv.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	inv, secret := e.tokens(t, 2)

	t.Run("two instances at once", func(t *testing.T) {
		exec := &counted{Executor: e.execs[killswitch.ActionRevokeTokenAccessor]}
		a := newRunnerRig(t, e, inv, rigOpts{store: store, instance: "a", sleep: clock.Sleep, exec: exec})
		b := newRunnerRig(t, e, inv, rigOpts{store: store, instance: "b", sleep: clock.Sleep, exec: exec})
		var wg sync.WaitGroup
		refs := make([]incidents.ActionRef, 2)
		for i, x := range []*runnerRig{a, b} {
			wg.Go(func() { refs[i] = x.act(t, "v00", "inc-twice", "api") })
		}
		wg.Wait()
		if n := exec.applies.Load(); n != 1 {
			t.Fatalf("Vault was asked to revoke %d times, want 1", n)
		}
		done := 0
		for _, ref := range refs {
			if ref.Status != incidents.ActionVerified {
				t.Fatalf("status %s, want verified for both instances", ref.Status)
			}
			if strings.HasPrefix(ref.Detail, "already done") {
				done++
			}
		}
		if done != 1 {
			t.Fatalf("details %q / %q: want exactly one instance reporting it already done", refs[0].Detail, refs[1].Detail)
		}
		if e.alive(t, secret["v00/api"]) {
			t.Fatal("the token still works")
		}
		// The same decision delivered again: nothing more reaches Vault.
		if ref := a.act(t, "v00", "inc-twice", "api"); ref.Status != incidents.ActionVerified || exec.applies.Load() != 1 {
			t.Fatalf("redelivery: %+v after %d applies", ref, exec.applies.Load())
		}
	})

	t.Run("crash between claim and apply", func(t *testing.T) {
		exec := &counted{Executor: e.execs[killswitch.ActionRevokeTokenAccessor]}
		r := newRunnerRig(t, e, inv, rigOpts{cfg: actions.Settings{ClaimStale: 30 * time.Second}, store: store, instance: "restarted", exec: exec})
		a := playbooks.Action{Type: killswitch.ActionRevokeTokenAccessor, Credential: "api", Mode: killswitch.ModeEnforce}
		claim, _ := json.Marshal(actions.Claim{State: "claimed", Instance: "crashed", At: r.clk.Now()})
		if _, err := store.Create(ctx, actions.ClaimsBucket, actions.ActionID("inc-crash", a), claim); err != nil {
			t.Fatal(err)
		}
		r.clk.Advance(31 * time.Second)
		if ref := r.act(t, "v01", "inc-crash", "api"); ref.Status != incidents.ActionVerified {
			t.Fatalf("after restart: %+v", ref)
		}
		if ref := r.act(t, "v01", "inc-crash", "api"); ref.Status != incidents.ActionVerified {
			t.Fatalf("second delivery: %+v", ref)
		}
		if n := exec.applies.Load(); n != 1 {
			t.Fatalf("applied %d times after the crash, want exactly 1", n)
		}
		if e.alive(t, secret["v01/api"]) {
			t.Fatal("the token still works")
		}
	})
}

func TestRunnerVaultDownThenBack(t *testing.T) {
	e := newEnv(t)
	inv, secret := e.tokens(t, 1)
	e.ks.SetClientTimeout(2 * time.Second)
	if err := e.v.Process.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	var waits []time.Duration
	sleep := func(_ context.Context, d time.Duration) error {
		waits = append(waits, d)
		if len(waits) == 2 { // Vault comes back after the second failed attempt
			resumed = true
			return e.v.Process.Resume()
		}
		return nil
	}
	t.Cleanup(func() {
		if !resumed {
			_ = e.v.Process.Resume()
		}
	})
	r := newRunnerRig(t, e, inv, rigOpts{cfg: actions.Settings{Attempts: 5, CallTimeout: 200 * time.Millisecond}, sleep: sleep})
	ref := r.act(t, "v00", "inc-down", "api")
	if ref.Status != incidents.ActionVerified {
		t.Fatalf("status %s (%s), want verified once Vault is back", ref.Status, ref.Detail)
	}
	s := r.stages(t)
	if s["apply-attempt-1"] != 1 || s["apply-attempt-2"] != 1 || s["apply-attempt-3"] != 0 {
		t.Fatalf("stages %v: want two failed attempts recorded, then success", s)
	}
	if len(waits) != 2 || waits[1] <= waits[0]/2 {
		t.Fatalf("backoff waits %v", waits)
	}
	if e.alive(t, secret["v00/api"]) {
		t.Fatal("the token still works")
	}
}

func TestRunnerForbiddenNoRetryStorm(t *testing.T) {
	e := newEnv(t)
	inv, secret := e.tokens(t, 1)
	weak := e.tokenClient(t, "weak", `path "auth/token/lookup-accessor" { capabilities = ["update"] }`)
	exec := &counted{Executor: vault.New(weak)[killswitch.ActionRevokeTokenAccessor]}
	r := newRunnerRig(t, e, inv, rigOpts{cfg: actions.Settings{Attempts: 5}, exec: exec})
	ref := r.act(t, "v00", "inc-403", "api")
	if ref.Status != incidents.ActionFailed || exec.applies.Load() != 1 {
		t.Fatalf("status %s after %d applies; want failed after exactly one", ref.Status, exec.applies.Load())
	}
	if s := r.stages(t); s["apply-attempt-1"] != 1 || s["apply-attempt-2"] != 0 {
		t.Fatalf("stages %v", s)
	}
	if !e.alive(t, secret["v00/api"]) {
		t.Fatal("the token died without the capability?")
	}
}

// BenchmarkRevokeTokenAccessor measures decision → verified revocation through the
// guard rails (memory store and ledger) against the real dev Vault, and reports the
// latency percentiles.
func BenchmarkRevokeTokenAccessor(b *testing.B) {
	e := newEnv(b)
	lat := make([]time.Duration, 0, b.N)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		inv, _ := e.tokens(b, 1)
		r := newRunnerRig(b, e, inv, rigOpts{cfg: actions.Settings{Budget: 1 << 30, VendorBudget: 1 << 30}})
		b.StartTimer()
		start := time.Now()
		ref := r.act(b, "v00", fmt.Sprintf("inc-%d", i), "api")
		lat = append(lat, time.Since(start))
		if ref.Status != incidents.ActionVerified {
			b.Fatalf("status %s", ref.Status)
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
