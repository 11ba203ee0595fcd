package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"go.uber.org/zap"
)

// Control keys in ControlBucket.
const (
	pauseKey   = "pause"
	breakerKey = "breaker"
)

// Switch is the state of the pause switch, the breaker, or a cooldown stamp.
type Switch struct {
	On     bool      `json:"on"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Status is the state of the control plane.
type Status struct {
	// Mode is the global action mode.
	Mode killswitch.Mode
	// Paused is the pause switch: while on, every destructive action is held.
	Paused Switch
	// Breaker is the budget's circuit breaker: while open, every destructive action is
	// held for approval.
	Breaker Switch
}

// window is a sliding budget window (one key in the control bucket, shared by every
// instance): the units taken recently, one per action, in the order they were taken.
//
// A unit may be taken at now only while fewer than the limit count against it: those
// taken less than the window's span before or after now (after: an instance whose clock
// runs ahead). So no interval of that span ever holds more than the limit, whatever the
// order in which the instances commit and however their clocks differ (by less than the
// span). Units are kept for twice the span, so an instance that read its time a moment
// before another still sees every unit it must count; the key therefore holds at most
// about twice the limit units, and stays small.
type window struct {
	Units []unit `json:"units"`
}

// unit is one destructive action's unit of a budget.
type unit struct {
	// Action is the action's fleet-wide ID: a unit is refunded by it, and an action
	// holds at most one unit of a window.
	Action string `json:"a"`
	// At is when the unit was taken, in Unix nanoseconds.
	At int64 `json:"t"`
}

// live returns the units that count against a unit taken at now: those taken less than
// span before or after it.
func (w window) live(now time.Time, span time.Duration) []unit {
	from, to := now.Add(-span).UnixNano(), now.Add(span).UnixNano()
	return slices.DeleteFunc(slices.Clone(w.Units), func(u unit) bool { return u.At <= from || u.At >= to })
}

// kept returns the units still kept at now: those taken less than twice span before
// it, or later.
func (w window) kept(now time.Time, span time.Duration) []unit {
	from := now.Add(-2 * span).UnixNano()
	return slices.DeleteFunc(slices.Clone(w.Units), func(u unit) bool { return u.At <= from })
}

// holds reports whether units include one taken for action.
func holds(units []unit, action string) bool {
	return slices.ContainsFunc(units, func(u unit) bool { return u.Action == action })
}

// Control is the fleet-wide control plane of the guard rails: the pause switch (the
// kill switch for the kill switch), the budget's circuit breaker, the budgets' sliding
// windows and the cooldown stamps, kept in the Store (JetStream KV in the service, shared by
// every instance). Every operator's change is recorded in the ledger before it takes
// effect. It is safe for concurrent use.
type Control struct {
	s      Settings
	store  Store
	ledger ledger.Appender
	clock  clock.Clock
	log    *zap.Logger

	mu     sync.RWMutex
	live   bool              // the mirror follows the bucket (Watch is running and synced)
	mirror map[string]stored // the control bucket, as last seen by Watch
}

// stored is one value of the mirror.
type stored struct {
	value []byte
	rev   uint64
}

// Watch keeps a mirror of the control bucket while ctx lasts, when the Store can watch
// (JetStream KV): the guard rails then read the pause switch, the breaker, cooldowns and
// budget windows from memory. Without it, or while it is not synced, they read the
// Store. It returns when ctx is done (nil) or the watch fails (the error; reads go to
// the Store again, and the caller may call Watch again).
func (c *Control) Watch(ctx context.Context) error {
	w, ok := c.store.(Watcher)
	if !ok {
		<-ctx.Done()
		return nil
	}
	defer func() {
		c.mu.Lock()
		c.live, c.mirror = false, nil
		c.mu.Unlock()
	}()
	c.mu.Lock()
	c.mirror = map[string]stored{}
	c.mu.Unlock()
	return w.Watch(ctx, ControlBucket, func(key string, value []byte, rev uint64) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if value == nil {
			delete(c.mirror, key)
			return
		}
		if cur, ok := c.mirror[key]; !ok || rev > cur.rev {
			c.mirror[key] = stored{value: value, rev: rev}
		}
	}, func() {
		c.mu.Lock()
		c.live = true
		c.mu.Unlock()
	})
}

// read decodes a control value from the mirror when it is live, else from the Store;
// ok is false when the key does not exist.
func (c *Control) read(ctx context.Context, key string, v any) (rev uint64, ok bool, err error) {
	c.mu.RLock()
	if !c.live {
		c.mu.RUnlock()
		return getJSON(ctx, c.store, ControlBucket, key, v)
	}
	e, ok := c.mirror[key]
	c.mu.RUnlock()
	if !ok {
		return 0, false, nil
	}
	if err := json.Unmarshal(e.value, v); err != nil {
		return 0, false, killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("actions: %s/%s holds bad JSON: %w", ControlBucket, key, err))
	}
	return e.rev, true, nil
}

// wrote notes a value this Control wrote, so that its own next read sees it even before
// the watch delivers it.
func (c *Control) wrote(key string, value []byte, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live {
		if cur, ok := c.mirror[key]; !ok || rev > cur.rev {
			c.mirror[key] = stored{value: value, rev: rev}
		}
	}
}

// Pause stops automation fleet-wide: every destructive action is held from the next
// decision on, until Resume.
func (c *Control) Pause(ctx context.Context, who, reason string) error {
	return c.set(ctx, pauseKey, Switch{On: true, By: who, At: c.clock.Now(), Reason: reason})
}

// Resume restarts automation.
func (c *Control) Resume(ctx context.Context, who string) error {
	return c.set(ctx, pauseKey, Switch{On: false, By: who, At: c.clock.Now()})
}

// ResetBreaker closes the budget's circuit breaker.
func (c *Control) ResetBreaker(ctx context.Context, who string) error {
	return c.set(ctx, breakerKey, Switch{On: false, By: who, At: c.clock.Now(), Reason: "reset"})
}

// Status reports the global switches.
func (c *Control) Status(ctx context.Context) (Status, error) {
	st := Status{Mode: c.s.Mode}
	p, err := c.get(ctx, pauseKey)
	if err != nil {
		return st, err
	}
	b, err := c.get(ctx, breakerKey)
	if err != nil {
		return st, err
	}
	st.Paused, st.Breaker = p, b
	return st, nil
}

// Budget reports the revocation budget for the playbooks' input, from the same sliding
// window the budget guard consumes: Remaining is how many units could be taken now. A store that cannot be read reports the whole budget (the
// guards still check it before anything runs).
func (c *Control) Budget(ctx context.Context) playbooks.Budget {
	b := playbooks.Budget{Limit: c.s.Budget, Remaining: c.s.Budget, Window: c.s.BudgetWindow.String()}
	var w window
	if _, _, err := c.read(ctx, budgetKey, &w); err == nil {
		b.Remaining = max(0, c.s.Budget-len(w.live(c.clock.Now(), c.s.BudgetWindow)))
	}
	if br, err := c.get(ctx, breakerKey); err == nil {
		b.BreakerOpen = br.On
	}
	return b
}

// set records an operator's switch in the ledger, then sets it.
func (c *Control) set(ctx context.Context, key string, s Switch) error {
	b, err := json.Marshal(map[string]any{"switch": key, "on": s.On, "by": s.By, "reason": s.Reason})
	if err != nil {
		return killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	if _, err := c.ledger.Append(ctx, ledger.Entry{
		Type: ledger.TypeControl, ID: key + "/" + strconv.FormatInt(s.At.UnixNano(), 10) + "/" + s.By,
		Time: s.At, Payload: b,
	}); err != nil {
		return err
	}
	c.log.Warn("control switch", zap.String("switch", key), zap.Bool("on", s.On), zap.String("by", s.By))
	return c.put(ctx, key, s)
}

// get reads a switch; an unset switch is off.
func (c *Control) get(ctx context.Context, key string) (Switch, error) {
	var s Switch
	_, _, err := c.read(ctx, key, &s)
	return s, err
}

// openBreaker opens the breaker because the budget is spent.
func (c *Control) openBreaker(ctx context.Context, reason string) error {
	c.log.Error("revocation budget spent: breaker open, approval-only mode", zap.Int("budget", c.s.Budget))
	return c.put(ctx, breakerKey, Switch{On: true, By: "budget", At: c.clock.Now(), Reason: reason})
}

// budgetKey is the fleet-wide budget's sliding window.
const budgetKey = "budget"

// vendorBudgetKey is the sliding window of one vendor's budget (blast radius).
func vendorBudgetKey(vendor string) string { return "vendor-budget." + hashKey(vendor) }

// consume takes one unit of the sliding window at key for action at now, with
// compare-and-set on the Store; false when limit units already count against now (see
// window). An action that already holds a counted unit keeps it and passes (a decision
// handled again does not pay twice). Old units are dropped on every write. The first
// attempt trusts the mirror (one storage round: the write); a lost race reads the Store.
func (c *Control) consume(ctx context.Context, key, action string, now time.Time, limit int) (bool, error) {
	read := c.read
	for range 20 {
		var w window
		rev, ok, err := read(ctx, key, &w)
		if err != nil {
			return false, err
		}
		live := w.live(now, c.s.BudgetWindow)
		if holds(live, action) {
			return true, nil
		}
		if len(live) >= limit {
			return false, nil
		}
		b, err := json.Marshal(window{Units: append(w.kept(now, c.s.BudgetWindow), unit{Action: action, At: now.UnixNano()})})
		if err != nil {
			return false, killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		var nrev uint64
		if ok {
			nrev, err = c.store.Update(ctx, ControlBucket, key, b, rev)
		} else {
			nrev, err = c.store.Create(ctx, ControlBucket, key, b)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrStale) {
			// Another instance took a unit first, or the mirror lags: read the Store.
			read = func(ctx context.Context, key string, v any) (uint64, bool, error) {
				return getJSON(ctx, c.store, ControlBucket, key, v)
			}
			continue
		}
		if err == nil {
			c.wrote(key, b, nrev)
		}
		return err == nil, err
	}
	return false, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: budget window %s is contended", key))
}

// release gives back the unit action holds in the sliding window at key, if any
// (compare-and-set on the Store).
func (c *Control) release(ctx context.Context, key, action string) error {
	for range 20 {
		var w window
		rev, ok, err := getJSON(ctx, c.store, ControlBucket, key, &w)
		if err != nil || !ok || !holds(w.Units, action) {
			return err
		}
		w.Units = slices.DeleteFunc(w.kept(c.clock.Now(), c.s.BudgetWindow), func(u unit) bool { return u.Action == action })
		b, err := json.Marshal(w)
		if err != nil {
			return killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		nrev, err := c.store.Update(ctx, ControlBucket, key, b, rev)
		if errors.Is(err, ErrStale) {
			continue
		}
		if err == nil {
			c.wrote(key, b, nrev)
		}
		return err
	}
	return killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: budget window %s is contended", key))
}

// gate reports why an action about to be applied must be held after all: the pause
// switch is on, or the breaker is open (not for an approved action: a human decided).
// The runner asks immediately before every Apply; it reads the mirror when it is live.
func (c *Control) gate(ctx context.Context, approved bool) (guard, reason string, err error) {
	guards := []Guard{PauseGuard{c}, BreakerGuard{c}}
	if approved {
		guards = guards[:1]
	}
	for _, g := range guards {
		if hold, err := g.Check(ctx, Check{}); err != nil || hold != "" {
			return g.Name(), hold, err
		}
	}
	return "", "", nil
}

// cooldown returns the last stamp of a credential (ok false when it was never acted on).
func (c *Control) cooldown(ctx context.Context, vendor, cred string) (Switch, bool, error) {
	var s Switch
	_, ok, err := c.read(ctx, cooldownKey(vendor, cred), &s)
	return s, ok, err
}

// stampCooldown records that incident acted on (vendor, cred) now.
func (c *Control) stampCooldown(ctx context.Context, vendor, cred, incident string) error {
	return c.put(ctx, cooldownKey(vendor, cred), Switch{On: true, By: incident, At: c.clock.Now()})
}

// put stores a control value whatever its current revision (last writer wins).
func (c *Control) put(ctx context.Context, key string, v any) error {
	b, rev, err := putJSON(ctx, c.store, ControlBucket, key, v)
	if err == nil {
		c.wrote(key, b, rev)
	}
	return err
}

func cooldownKey(vendor, cred string) string { return "cooldown." + hashKey(vendor+"\x00"+cred) }

func hashKey(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:10])
}

// getJSON reads a JSON value; ok is false when the key does not exist.
func getJSON(ctx context.Context, s Store, bucket, key string, v any) (rev uint64, ok bool, err error) {
	b, rev, err := s.Get(ctx, bucket, key)
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return 0, false, killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("actions: %s/%s holds bad JSON: %w", bucket, key, err))
	}
	return rev, true, nil
}

// putJSON stores a JSON value whatever its current revision (last writer wins) and
// returns what it stored and the new revision.
func putJSON(ctx context.Context, s Store, bucket, key string, v any) ([]byte, uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, 0, killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	for range 10 {
		_, rev, err := s.Get(ctx, bucket, key)
		var nrev uint64
		switch {
		case errors.Is(err, ErrNotFound):
			nrev, err = s.Create(ctx, bucket, key, b)
		case err == nil:
			nrev, err = s.Update(ctx, bucket, key, b, rev)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrStale) {
			continue
		}
		return b, nrev, err
	}
	return nil, 0, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: %s/%s keeps changing under us", bucket, key))
}
