package actions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
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
	other := check // another action of the same vendor, a moment before
	other.Action, other.Incident, other.Now = "act-0", "inc-0", t0.Add(-time.Second)
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
				if _, err := (BlastRadiusGuard{c}).Check(ctx, other); err != nil {
					t.Fatal(err)
				}
			}, hold: "vendor v01 reached 1 destructive actions"},
		{name: "budget: spent holds and opens the breaker", guard: func(c *Control) Guard { return BudgetGuard{c} },
			settings: Settings{Budget: 1},
			setup: func(t *testing.T, c *Control) {
				if _, err := (BudgetGuard{c}).Check(ctx, other); err != nil {
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
	if got := strings.Join(names, ","); got != "paused,storm,approval,cooldown,breaker,blast_radius,budget" {
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
		var w window
		if _, _, err := getJSON(ctx, c.store, ControlBucket, budgetKey, &w); err != nil {
			t.Fatal(err)
		}
		return len(w.live(t0, c.s.BudgetWindow))
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

// staleStore loses every compare-and-set race, as a store hammered by other instances
// would.
type staleStore struct{ *MemoryStore }

func (s staleStore) Update(context.Context, string, string, []byte, uint64) (uint64, error) {
	return 0, ErrStale
}

func (s staleStore) Create(context.Context, string, string, []byte) (uint64, error) {
	return 0, ErrExists
}

// The budgets are sliding windows: never more than the limit in any interval of the
// window's length, whatever the fixed hours say. Each step takes (or refunds) one
// action's unit at an offset from 11:00; the table says which pass.
func TestBudgetSlidingWindow(t *testing.T) {
	ctx := context.Background()
	type step struct {
		at     time.Duration // from 11:00
		action string
		vendor string
		refund bool
		pass   bool
	}
	// burst is n steps of distinct actions from at, every every, all passing or not.
	burst := func(prefix, vendor string, n int, at, every time.Duration, pass bool) []step {
		var s []step
		for i := range n {
			s = append(s, step{at: at + time.Duration(i)*every, action: fmt.Sprintf("%s-%d", prefix, i), vendor: vendor, pass: pass})
		}
		return s
	}
	join := func(parts ...[]step) []step { return slices.Concat(parts...) }
	tests := []struct {
		name     string
		guard    func(c *Control) Consumer
		settings Settings
		steps    []step
		// remaining is Budget().Remaining at the end (fleet budget only; -1 skips)
		remaining int
		end       time.Duration
	}{
		{name: "fleet: 10 at 59:00-59:59, 10 more at 00:00-01:00 straddling the hour: the second 10 are held",
			guard: func(c *Control) Consumer { return BudgetGuard{c} }, settings: Settings{Budget: 10, BudgetWindow: time.Hour},
			steps: join(burst("a", "v01", 10, 59*time.Minute, 6*time.Second, true),
				burst("b", "v02", 10, 60*time.Minute, 6*time.Second, false)),
			remaining: 0, end: 61 * time.Minute},
		{name: "fleet: a unit frees exactly one window after it was taken",
			guard: func(c *Control) Consumer { return BudgetGuard{c} }, settings: Settings{Budget: 2, BudgetWindow: time.Hour},
			steps: []step{{at: 0, action: "a", pass: true}, {at: 30 * time.Minute, action: "b", pass: true},
				{at: 59*time.Minute + 59*time.Second, action: "c"}, {at: 60 * time.Minute, action: "d", pass: true},
				{at: 61 * time.Minute, action: "e"}, {at: 90 * time.Minute, action: "f", pass: true}},
			remaining: 0, end: 90 * time.Minute},
		{name: "fleet: the same action twice takes one unit",
			guard: func(c *Control) Consumer { return BudgetGuard{c} }, settings: Settings{Budget: 2, BudgetWindow: time.Hour},
			steps: []step{{at: 0, action: "a", pass: true}, {at: time.Minute, action: "a", pass: true},
				{at: 2 * time.Minute, action: "b", pass: true}, {at: 3 * time.Minute, action: "c"}},
			remaining: 0, end: 3 * time.Minute},
		{name: "fleet: a refund frees the unit, twice is harmless, an unknown action frees nothing",
			guard: func(c *Control) Consumer { return BudgetGuard{c} }, settings: Settings{Budget: 2, BudgetWindow: time.Hour},
			steps: []step{{at: 0, action: "a", pass: true}, {at: time.Minute, action: "b", pass: true},
				{at: 2 * time.Minute, action: "c"}, {at: 3 * time.Minute, action: "a", refund: true},
				{at: 3 * time.Minute, action: "a", refund: true}, {at: 3 * time.Minute, action: "zz", refund: true},
				{at: 4 * time.Minute, action: "c", pass: true}, {at: 5 * time.Minute, action: "d"}},
			remaining: 0, end: 5 * time.Minute},
		{name: "fleet: remaining follows the window",
			guard: func(c *Control) Consumer { return BudgetGuard{c} }, settings: Settings{Budget: 5, BudgetWindow: time.Hour},
			steps:     burst("a", "v01", 3, 0, 10*time.Minute, true),
			remaining: 4, end: 75 * time.Minute}, // the units of 11:00 and 11:10 freed, 11:20 counts
		{name: "vendor: 3 at 59:30-59:50 and 3 at 00:00-00:20 of the same vendor: the second 3 are held",
			guard: func(c *Control) Consumer { return BlastRadiusGuard{c} }, settings: Settings{VendorBudget: 3, BudgetWindow: time.Hour},
			steps: join(burst("a", "v01", 3, 59*time.Minute+30*time.Second, 10*time.Second, true),
				burst("b", "v01", 3, 60*time.Minute, 10*time.Second, false),
				burst("c", "v02", 3, 60*time.Minute, 10*time.Second, true)),
			remaining: -1},
		{name: "vendor: the window slides past the first units",
			guard: func(c *Control) Consumer { return BlastRadiusGuard{c} }, settings: Settings{VendorBudget: 2, BudgetWindow: 10 * time.Minute},
			steps: []step{{at: 0, action: "a", vendor: "v01", pass: true}, {at: 5 * time.Minute, action: "b", vendor: "v01", pass: true},
				{at: 9 * time.Minute, action: "c", vendor: "v01"}, {at: 10 * time.Minute, action: "d", vendor: "v01", pass: true},
				{at: 14 * time.Minute, action: "e", vendor: "v01"}, {at: 15 * time.Minute, action: "f", vendor: "v01", pass: true}},
			remaining: -1},
	}
	base := t0.Add(time.Hour) // 11:00; the manual clock never goes back
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newControl(t, tt.settings, NewMemoryStore())
			clk := c.clock.(*clock.Manual)
			clk.Set(base)
			g := tt.guard(c)
			for i, s := range tt.steps {
				vendor := s.vendor
				if vendor == "" {
					vendor = "v01"
				}
				chk := Check{Now: base.Add(s.at), Action: s.action, Incident: "inc-" + s.action, Vendor: vendor, Credential: "api"}
				clk.Set(chk.Now)
				if s.refund {
					if err := g.Refund(ctx, chk); err != nil {
						t.Fatalf("step %d: refund %s: %v", i, s.action, err)
					}
					continue
				}
				hold, err := g.Check(ctx, chk)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if (hold == "") != s.pass {
					t.Fatalf("step %d (%s at +%s): hold %q, want pass=%v", i, s.action, s.at, hold, s.pass)
				}
			}
			if tt.remaining >= 0 {
				clk.Set(base.Add(tt.end))
				if b := c.Budget(ctx); b.Remaining != tt.remaining {
					t.Fatalf("Budget() = %+v, want %d remaining", b, tt.remaining)
				}
			}
		})
	}
}

// Consumers contending for one window on one store: never more units than the limit,
// and a race lost too often is a retryable conflict, never a pass or a hold.
func TestBudgetContention(t *testing.T) {
	ctx := context.Background()
	t.Run("many at once", func(t *testing.T) {
		c := newControl(t, Settings{Budget: 10, BudgetWindow: time.Hour}, NewMemoryStore())
		var mu sync.Mutex
		passed, held, conflicts := 0, 0, 0
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hold, err := (BudgetGuard{c}).Check(ctx, Check{Now: t0.Add(time.Duration(i) * time.Millisecond), Action: fmt.Sprintf("act-%d", i)})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil && killswitch.ReasonOf(err) == killswitch.ReasonConflict && killswitch.IsRetryable(err):
					conflicts++
				case err != nil:
					t.Errorf("unexpected error %v", err)
				case hold == "":
					passed++
				default:
					held++
				}
			}()
		}
		wg.Wait()
		if passed > 10 || (conflicts == 0 && passed != 10) || passed+held+conflicts != 64 {
			t.Fatalf("%d passed, %d held, %d conflicts; the budget is 10", passed, held, conflicts)
		}
		if b := c.Budget(ctx); b.Remaining != 10-passed {
			t.Fatalf("Budget() = %+v after %d passed", b, passed)
		}
	})
	t.Run("always losing", func(t *testing.T) {
		c := newControl(t, Settings{Budget: 10}, staleStore{NewMemoryStore()})
		hold, err := (BudgetGuard{c}).Check(ctx, Check{Now: t0, Action: "act-1"})
		if hold != "" || !killswitch.IsRetryable(err) || killswitch.ReasonOf(err) != killswitch.ReasonConflict {
			t.Fatalf("hold %q, err %v; want a retryable conflict", hold, err)
		}
	})
}

// The pause switch and the breaker as seen immediately before Apply: the pause holds
// everything, the breaker all but approved actions.
func TestGate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		setup     func(c *Control) error
		approved  bool
		wantGuard string
	}{
		{name: "nothing on", setup: func(*Control) error { return nil }},
		{name: "paused", setup: func(c *Control) error { return c.Pause(ctx, "ana", "drill") }, wantGuard: "paused"},
		{name: "paused, approved", setup: func(c *Control) error { return c.Pause(ctx, "ana", "drill") }, approved: true, wantGuard: "paused"},
		{name: "breaker open", setup: func(c *Control) error { return c.openBreaker(ctx, "spent") }, wantGuard: "breaker"},
		{name: "breaker open, approved", setup: func(c *Control) error { return c.openBreaker(ctx, "spent") }, approved: true},
		{name: "resumed", setup: func(c *Control) error {
			return errors.Join(c.Pause(ctx, "ana", "drill"), c.Resume(ctx, "ana"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newControl(t, Settings{}, NewMemoryStore())
			if err := tt.setup(c); err != nil {
				t.Fatal(err)
			}
			guard, hold, err := c.gate(ctx, tt.approved)
			if err != nil || guard != tt.wantGuard && hold != "" || (hold != "") != (tt.wantGuard != "") {
				t.Fatalf("gate = %s %q %v, want %q", guard, hold, err, tt.wantGuard)
			}
			if _, _, err := newControl(t, Settings{}, brokenStore{}).gate(ctx, tt.approved); !errors.Is(err, errDown) {
				t.Fatalf("gate on a broken store: %v", err)
			}
		})
	}
}
