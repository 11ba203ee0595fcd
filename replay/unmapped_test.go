package replay

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/scenario"
)

// mixedInventory is the scenario's inventory without its first attacked vendor and
// without one credential of its second: some credentials listed, some unmapped.
func mixedInventory(sc *scenario.Scenario) (killswitch.Inventory, detectors.Key) {
	inv := sc.Inventory()
	mixed := maps.Clone(inv)
	atts := sc.Attacks()
	delete(mixed, atts[0].Vendor)
	var dropped detectors.Key
	for _, a := range atts[1:] {
		if a.Vendor == atts[0].Vendor || a.Credential == "" {
			continue
		}
		v := mixed[a.Vendor]
		v.Credentials = maps.Clone(v.Credentials)
		delete(v.Credentials, a.Credential)
		mixed[a.Vendor] = v
		dropped = detectors.Key{Vendor: a.Vendor, Credential: a.Credential}
		break
	}
	return mixed, dropped
}

// A zero-config replay plans revocations of the credentials seen in the telemetry,
// marked unmapped, and so has a containment figure; an inventory's credentials are
// decided exactly as without Unmapped.
func TestUnmappedContainment(t *testing.T) {
	sc, path := writeScenario(t, scenario.Config{Seed: 7, Days: 10, Vendors: 6, Attacks: 2})
	pb := shipped(t)
	mixed, dropped := mixedInventory(sc)
	if dropped.Credential == "" {
		t.Fatal("the scenario has no second attacked credential to drop from the inventory")
	}
	full := replayFile(t, path, Options{Playbooks: pb, Vendors: sc.Inventory(), NewActor: PlanActions(actions.Settings{}, sc.Inventory()), PlannedContains: true})
	fullTargets := map[string]string{} // incident/type/credential → target
	for _, in := range full.Incidents {
		for _, a := range in.Actions {
			fullTargets[in.ID+"/"+a.Type+"/"+credentialOf(a.Target)] = a.Target
		}
	}
	for _, tc := range []struct {
		name string
		inv  killswitch.Inventory
		// wantUnmapped: the report has unmapped credentials and contains through them.
		wantUnmapped bool
		// sameAsWithout: the report is byte-identical with and without Unmapped.
		sameAsWithout bool
	}{
		{name: "zero config", inv: nil, wantUnmapped: true},
		{name: "inventory", inv: sc.Inventory(), sameAsWithout: true},
		{name: "mixed", inv: mixed, wantUnmapped: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := func(unmapped bool) Options {
				return Options{Playbooks: pb, Vendors: tc.inv, NewActor: PlanActions(actions.Settings{}, tc.inv), PlannedContains: true, Unmapped: unmapped}
			}
			without, with := replayFile(t, path, opts(false)), replayFile(t, path, opts(true))
			var a, b bytes.Buffer
			if err := without.WriteJSON(&a); err != nil {
				t.Fatal(err)
			}
			if err := with.WriteJSON(&b); err != nil {
				t.Fatal(err)
			}
			if tc.sameAsWithout {
				if !bytes.Equal(a.Bytes(), b.Bytes()) {
					t.Fatalf("an inventory listing every credential gives a different report with Unmapped:\nwithout: %s\nwith:    %s", a.String(), b.String())
				}
				if with.Summary.UnmappedCredentials != 0 || with.Summary.ContainedUnmapped != 0 {
					t.Fatalf("summary %+v: want no unmapped credential", with.Summary)
				}
				return
			}
			s := with.Summary
			t.Logf("without Unmapped: %d of %d contained; with: %d contained (%d through %d unmapped credentials), median exposure %v, stopped %d B",
				without.Summary.Contained, without.Summary.Incidents, s.Contained, s.ContainedUnmapped, s.UnmappedCredentials, deref(s.MedianExposureSeconds), s.BytesStopped)
			if len(with.Incidents) != len(without.Incidents) {
				t.Fatalf("%d incidents with Unmapped, %d without: detection must not change", len(with.Incidents), len(without.Incidents))
			}
			if !tc.wantUnmapped {
				return
			}
			if s.UnmappedCredentials == 0 || s.ContainedUnmapped == 0 || s.Contained <= without.Summary.Contained {
				t.Fatalf("summary %+v (without: %+v): want contained incidents through unmapped credentials", s, without.Summary)
			}
			if s.MedianExposureSeconds == nil || s.BytesStopped <= without.Summary.BytesStopped {
				t.Fatalf("summary %+v: want exposure windows and bytes stopped", s)
			}
			if tc.inv == nil && s.ContainedUnmapped != s.Contained {
				t.Fatalf("zero config: %d contained but %d through unmapped credentials", s.Contained, s.ContainedUnmapped)
			}
			if tc.inv == nil { // the credentials seen do not depend on how many keys the charts keep
				o := opts(true)
				o.ChartKeys = 1
				var c bytes.Buffer
				if err := replayFile(t, path, o).WriteJSON(&c); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b.Bytes(), c.Bytes()) {
					t.Fatal("the JSON report changes with ChartKeys")
				}
			}
			seen := map[string]bool{}
			for _, in := range with.Incidents {
				if (in.ContainedAt == nil) != (in.ExposureWindowSeconds == nil) {
					t.Fatalf("%s: contained_at %v but exposure window %v", in.ID, in.ContainedAt, in.ExposureWindowSeconds)
				}
				for _, a := range in.Actions {
					if a.Status == "applied" || a.Status == "verified" {
						t.Fatalf("%s: an action was %s in a plan-only replay", in.ID, a.Status)
					}
					if !a.Unmapped {
						if a.Type != string(killswitch.ActionNotify) && fullTargets[in.ID+"/"+a.Type+"/"+credentialOf(a.Target)] != a.Target {
							t.Errorf("%s: listed %s on %q differs from the full inventory's replay", in.ID, a.Type, a.Target)
						}
						continue
					}
					cred, ok := strings.CutPrefix(a.Target, "unmapped: add "+in.Vendor+"/")
					cred, _, _ = strings.Cut(cred, " ")
					if !ok || a.Target != UnmappedTarget(in.Vendor, cred) {
						t.Fatalf("%s: unmapped target %q", in.ID, a.Target)
					}
					if _, listed := tc.inv[in.Vendor].Credentials[cred]; listed {
						t.Fatalf("%s: %s/%s is in the inventory but marked unmapped", in.ID, in.Vendor, cred)
					}
					seen[in.Vendor+"/"+cred] = true
				}
			}
			if len(seen) != s.UnmappedCredentials {
				t.Fatalf("summary counts %d unmapped credentials, the actions name %d", s.UnmappedCredentials, len(seen))
			}
			if tc.inv != nil && !seen[dropped.Vendor+"/"+dropped.Credential] {
				t.Errorf("the listed vendor's unlisted credential %s/%s is not planned unmapped", dropped.Vendor, dropped.Credential)
			}
			var h bytes.Buffer
			if err := with.WriteHTML(&h); err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(h.Bytes(), []byte("Unmapped credentials")) || !bytes.Contains(h.Bytes(), []byte(">unmapped<")) {
				t.Error("the HTML report does not show the unmapped credentials")
			}
		})
	}
}

// credentialOf returns the vendor/credential a planned target names ("" for others).
func credentialOf(target string) string {
	f, _, _ := strings.Cut(target, " ")
	if !strings.Contains(f, "/") {
		return ""
	}
	return f
}

func deref(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// Unmapped credentials are only ever planned: a replay that could apply refuses them.
func TestUnmappedNeedsPlan(t *testing.T) {
	_, err := Run(context.Background(), nil, Options{Playbooks: shipped(t), Unmapped: true})
	if err == nil || !strings.Contains(err.Error(), "only be planned") {
		t.Fatalf("Unmapped without PlannedContains: %v", err)
	}
}

// countingExecutor counts Apply calls; it would revoke anything.
type countingExecutor struct{ applied atomic.Int64 }

func (e *countingExecutor) Plan(context.Context, actions.Target) (actions.Plan, error) {
	return actions.Plan{Summary: "would revoke"}, nil
}

func (e *countingExecutor) Apply(context.Context, actions.Target) (actions.Outcome, error) {
	e.applied.Add(1)
	return actions.Outcome{Detail: "revoked"}, nil
}

func (e *countingExecutor) Verify(context.Context, actions.Target) (actions.Verification, error) {
	return actions.Verification{Dead: true, Evidence: "gone"}, nil
}

// serviceActor is the actor as `killswitch run` builds it: not plan-only, executors that
// apply, the inventory as configured.
func serviceActor(t testing.TB, inv killswitch.Inventory, exec actions.Executor, clk clock.Clock, led ledger.Appender) *actions.Runner {
	t.Helper()
	r, err := actions.New(actions.Settings{}, actions.Deps{
		Store: actions.NewMemoryStore(), Ledger: led, Inventory: inv, Clock: clk,
		Executors:   actions.Registry{killswitch.ActionRevokeTokenAccessor: exec},
		Sleep:       func(context.Context, time.Duration) error { return nil },
		Fingerprint: actions.NewFingerprinter([]byte("test")),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The service never revokes a credential its inventory does not list: the plan's
// unmapped credentials exist only in a replay. The service's actor refuses a revocation
// of an unlisted credential (ErrNotInInventory) and applies nothing, and the pipeline the
// service runs, with the same telemetry that gives a zero-config replay its unmapped
// containment, proposes no revocation at all.
func TestServiceNeverRevokesUnmapped(t *testing.T) {
	ctx := context.Background()
	inv := killswitch.Inventory{"listed": {Credentials: map[string]killswitch.Credential{
		"listed-key": {Kind: killswitch.CredTokenAccessor, Accessor: "acc-listed"},
	}}}
	for _, tc := range []struct{ name, vendor, credential string }{
		{"vendor not in the inventory", "unlisted", "unlisted-key"},
		{"listed vendor, unlisted credential", "listed", "other-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := inv.Vendor(tc.vendor).Target(tc.credential, killswitch.ActionRevokeTokenAccessor); !errors.Is(err, killswitch.ErrNotInInventory) {
				t.Fatalf("Vendor.Target: %v, want ErrNotInInventory", err)
			}
			exec := &countingExecutor{}
			r := serviceActor(t, inv, exec, clock.NewManual(time.Unix(1_800_000_000, 0)), ledger.NewMemory())
			refs, err := r.Act(ctx, actions.Request{
				Incident: &incidents.Incident{ID: "inc-1", Vendor: tc.vendor, Credential: tc.credential},
				Result: playbooks.Result{ID: "dec-1", Decision: playbooks.Decision{Actions: []playbooks.Action{
					{Type: killswitch.ActionRevokeTokenAccessor, Credential: tc.credential},
				}}},
				Vendor: inv.Vendor(tc.vendor),
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != 1 || refs[0].Status != incidents.ActionFailed || !strings.Contains(refs[0].Detail, killswitch.ErrNotInInventory.Error()) {
				t.Fatalf("refs %+v: want one failed action, not in the inventory", refs)
			}
			if n := exec.applied.Load(); n != 0 {
				t.Fatalf("the executor applied %d revocation(s) of an unlisted credential", n)
			}
		})
	}

	t.Run("pipeline", func(t *testing.T) {
		_, path := writeScenario(t, scenario.Config{Seed: 7, Days: 10, Vendors: 6, Attacks: 2})
		exec := &countingExecutor{}
		rep := replayFile(t, path, Options{NewActor: func(clk clock.Clock, led ledger.Appender) (pipeline.Actor, error) {
			return serviceActor(t, nil, exec, clk, led), nil
		}})
		destructive := 0
		for _, in := range rep.Incidents {
			for _, a := range in.Actions {
				if killswitch.ActionType(a.Type).Destructive() {
					destructive++
				}
				if a.Unmapped {
					t.Fatalf("%s: an unmapped action outside a plan", in.ID)
				}
			}
		}
		if len(rep.Incidents) == 0 || destructive != 0 || exec.applied.Load() != 0 || rep.Summary.Contained != 0 {
			t.Fatalf("%d incidents, %d destructive actions, %d applied, %d contained: want incidents and nothing revoked",
				len(rep.Incidents), destructive, exec.applied.Load(), rep.Summary.Contained)
		}
	})
}
