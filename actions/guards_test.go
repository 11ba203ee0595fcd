package actions

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/ledger"
	"go.uber.org/zap"
)

// brokenStore fails every call, as an unreachable KV would.
type brokenStore struct{}

var errDown = errors.New("kv down")

func (brokenStore) Get(context.Context, string, string) ([]byte, uint64, error) {
	return nil, 0, errDown
}
func (brokenStore) Create(context.Context, string, string, []byte) (uint64, error) {
	return 0, errDown
}
func (brokenStore) Update(context.Context, string, string, []byte, uint64) (uint64, error) {
	return 0, errDown
}
func (brokenStore) Keys(context.Context, string) ([]string, error) { return nil, errDown }

func newControl(t *testing.T, s Settings, store Store) *Control {
	t.Helper()
	s.defaults()
	return &Control{s: s, store: store, ledger: ledger.NewMemory(), clock: clock.NewManual(t0), log: zap.NewNop()}
}

// Each guard on its own: what holds, what passes, and that a store failure is an error
// (nothing runs), never a pass.
func TestGuards(t *testing.T) {
	ctx := context.Background()
	check := Check{Now: t0, Action: "act-1", Incident: "inc-1", Vendor: "v01", Credential: "api", Reason: "critical spike"}
	tests := []struct {
		name     string
		guard    func(c *Control) Guard
		setup    func(t *testing.T, c *Control)
		check    func(Check) Check
		settings Settings
		hold     string // substring of the hold reason; "" passes
	}{
		{name: "pause: off passes", guard: func(c *Control) Guard { return PauseGuard{c} }},
		{name: "pause: on holds", guard: func(c *Control) Guard { return PauseGuard{c} },
			setup: func(t *testing.T, c *Control) {
				if err := c.Pause(ctx, "ana", "drill"); err != nil {
					t.Fatal(err)
				}
			}, hold: "paused by ana: drill"},
		{name: "approval: not required passes", guard: func(*Control) Guard { return ApprovalGuard{} }},
		{name: "approval: required holds", guard: func(*Control) Guard { return ApprovalGuard{} },
			check: func(c Check) Check { c.RequiresApproval = true; return c }, hold: "require approval: critical spike"},
		{name: "cooldown: never acted on passes", guard: func(c *Control) Guard { return CooldownGuard{c} }},
		{name: "cooldown: another incident just now holds", guard: func(c *Control) Guard { return CooldownGuard{c} },
			setup: func(t *testing.T, c *Control) {
				if err := c.stampCooldown(ctx, "v01", "api", "inc-0"); err != nil {
					t.Fatal(err)
				}
			}, hold: "acted on by incident inc-0"},
		{name: "cooldown: the same incident passes", guard: func(c *Control) Guard { return CooldownGuard{c} },
			setup: func(t *testing.T, c *Control) {
				if err := c.stampCooldown(ctx, "v01", "api", "inc-1"); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "cooldown: long ago passes", guard: func(c *Control) Guard { return CooldownGuard{c} },
			setup: func(t *testing.T, c *Control) {
				if err := c.stampCooldown(ctx, "v01", "api", "inc-0"); err != nil {
					t.Fatal(err)
				}
			}, check: func(c Check) Check { c.Now = c.Now.Add(time.Hour); return c }},
		{name: "breaker: closed passes", guard: func(c *Control) Guard { return BreakerGuard{c} }},
		{name: "breaker: open holds", guard: func(c *Control) Guard { return BreakerGuard{c} },
			setup: func(t *testing.T, c *Control) {
				if err := c.openBreaker(ctx, "spent"); err != nil {
					t.Fatal(err)
				}
			}, hold: "circuit breaker is open"},
		{name: "blast radius: within the vendor budget passes", guard: func(c *Control) Guard { return BlastRadiusGuard{c} },
			settings: Settings{VendorBudget: 1}},
		{name: "blast radius: spent holds", guard: func(c *Control) Guard { return BlastRadiusGuard{c} },
			settings: Settings{VendorBudget: 1},
			setup: func(t *testing.T, c *Control) {
				if _, err := (BlastRadiusGuard{c}).Check(ctx, check); err != nil {
					t.Fatal(err)
				}
			}, hold: "vendor v01 reached 1 destructive actions"},
		{name: "budget: spent holds and opens the breaker", guard: func(c *Control) Guard { return BudgetGuard{c} },
			settings: Settings{Budget: 1},
			setup: func(t *testing.T, c *Control) {
				if _, err := (BudgetGuard{c}).Check(ctx, check); err != nil {
					t.Fatal(err)
				}
			}, hold: "the circuit breaker opened"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newControl(t, tt.settings, NewMemoryStore())
			if tt.setup != nil {
				tt.setup(t, c)
			}
			chk := check
			if tt.check != nil {
				chk = tt.check(chk)
			}
			g := tt.guard(c)
			hold, err := g.Check(ctx, chk)
			if err != nil {
				t.Fatal(err)
			}
			if (hold == "") != (tt.hold == "") || !strings.Contains(hold, tt.hold) {
				t.Fatalf("%s: hold %q, want %q", g.Name(), hold, tt.hold)
			}
			if strings.HasPrefix(tt.name, "budget") {
				if st, _ := c.Status(ctx); !st.Breaker.On {
					t.Fatal("the spent budget did not open the breaker")
				}
			}
			// The same guard on a store that cannot be read fails: it never lets an action through.
			if _, ok := g.(ApprovalGuard); ok {
				return
			}
			broken := newControl(t, tt.settings, brokenStore{})
			if hold, err := tt.guard(broken).Check(ctx, chk); !errors.Is(err, errDown) {
				t.Fatalf("%s with the store down: hold %q, err %v; want the store's error", g.Name(), hold, err)
			}
		})
	}
}

// The standard chain, in order.
func TestGuardChainOrder(t *testing.T) {
	var names []string
	for _, g := range Guards(newControl(t, Settings{}, NewMemoryStore())) {
		names = append(names, g.Name())
	}
	if got := strings.Join(names, ","); got != "paused,approval,cooldown,breaker,blast_radius,budget" {
		t.Fatalf("chain %s", got)
	}
}

// The consumers at the end of the chain are checked together; when one holds the
// action, the unit the other took is given back.
func TestConsumersRefund(t *testing.T) {
	ctx := context.Background()
	c := newControl(t, Settings{Budget: 5, VendorBudget: 1}, NewMemoryStore())
	check := Check{Now: t0, Action: "act-1", Incident: "inc-1", Vendor: "v01", Credential: "api"}
	fleet := func() int {
		var n counter
		if _, _, err := getJSON(ctx, c.store, ControlBucket, c.budgetKey(t0), &n); err != nil {
			t.Fatal(err)
		}
		return n.Used
	}
	guards := Guards(c)
	if name, hold, err := runGuards(ctx, guards, check); err != nil || hold != "" {
		t.Fatalf("first action: %s %q %v", name, hold, err)
	}
	if fleet() != 1 {
		t.Fatalf("fleet budget used %d, want 1", fleet())
	}
	// The vendor's budget is spent: the blast radius holds, and the fleet unit the
	// budget guard took at the same time is given back.
	check.Action, check.Incident = "act-2", "inc-2"
	name, hold, err := runGuards(ctx, guards, check)
	if err != nil || name != "blast_radius" || hold == "" {
		t.Fatalf("second action: %s %q %v", name, hold, err)
	}
	if fleet() != 1 {
		t.Fatalf("fleet budget used %d after the refund, want 1", fleet())
	}
}
