package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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

// counter is a budget counter for one window.
type counter struct {
	Used int `json:"used"`
}

// Control is the fleet-wide control plane of the guard rails: the pause switch (the
// kill switch for the kill switch), the budget's circuit breaker, the budget counters
// and the cooldown stamps, kept in the Store (JetStream KV in the service, shared by
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
// budget counters from memory. Without it, or while it is not synced, they read the
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

// Budget reports the revocation budget for the playbooks' input. A store that cannot be
// read reports the whole budget (the guards still check it before anything runs).
func (c *Control) Budget(ctx context.Context) playbooks.Budget {
	b := playbooks.Budget{Limit: c.s.Budget, Remaining: c.s.Budget, Window: c.s.BudgetWindow.String()}
	var n counter
	if _, _, err := c.read(ctx, c.budgetKey(c.clock.Now()), &n); err == nil {
		b.Remaining = max(0, c.s.Budget-n.Used)
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

func (c *Control) budgetKey(now time.Time) string {
	return "budget." + strconv.FormatInt(now.Truncate(c.s.BudgetWindow).Unix(), 10)
}

func (c *Control) vendorBudgetKey(vendor string, now time.Time) string {
	return "vendor-budget." + hashKey(vendor) + "." + strconv.FormatInt(now.Truncate(c.s.BudgetWindow).Unix(), 10)
}

// consume takes one unit of a counter with compare-and-set; false when it is spent. The
// first attempt trusts the mirror; a lost race reads the Store.
func (c *Control) consume(ctx context.Context, key string, limit int) (bool, error) {
	read := c.read
	for range 20 {
		var n counter
		rev, ok, err := read(ctx, key, &n)
		if err != nil {
			return false, err
		}
		if n.Used >= limit {
			return false, nil
		}
		b, err := json.Marshal(counter{Used: n.Used + 1})
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
			// Another instance counted first, or the mirror lags: read the Store.
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
	return false, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: budget counter %s is contended", key))
}

// release gives back one unit of a counter (compare-and-set on the Store).
func (c *Control) release(ctx context.Context, key string) error {
	for range 20 {
		var n counter
		rev, ok, err := getJSON(ctx, c.store, ControlBucket, key, &n)
		if err != nil || !ok || n.Used == 0 {
			return err
		}
		b, err := json.Marshal(counter{Used: n.Used - 1})
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
	return killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("actions: budget counter %s is contended", key))
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
