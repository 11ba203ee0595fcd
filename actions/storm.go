package actions

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/ledger"
	"go.uber.org/zap"
)

// stormKey is the control key of the storm hold.
const stormKey = "storm"

// StormHold is a detection storm's hold: until Until, every destructive action on one
// of Vendors is held for a human's approval (requirement G7). Other vendors are not
// held, so a storm is never a fleet-wide pause.
type StormHold struct {
	Vendors []string  `json:"vendors"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason,omitempty"`
	// ClearedBy names the operator who lifted the hold before Until, if one did.
	ClearedBy string `json:"cleared_by,omitempty"`
}

// Active reports whether the hold is on at now.
func (h StormHold) Active(now time.Time) bool {
	return h.ClearedBy == "" && now.Before(h.Until) && len(h.Vendors) > 0
}

// Holds reports whether h holds vendor's destructive actions at now.
func (h StormHold) Holds(vendor string, now time.Time) bool {
	return h.Active(now) && slices.Contains(h.Vendors, vendor)
}

// HoldStorm records a storm's hold in the ledger, then sets it fleet-wide. A hold
// replaces the previous one (a storm that grows is held again with all its vendors).
func (c *Control) HoldStorm(ctx context.Context, h StormHold) error {
	h.Vendors = slices.Sorted(slices.Values(h.Vendors))
	return c.setStorm(ctx, h, "storm-guard")
}

// ClearStorm lifts the storm hold before its end; the actions it held stay held until
// someone approves, rejects or lets them expire.
func (c *Control) ClearStorm(ctx context.Context, who string) error {
	h, err := c.Storm(ctx)
	if err != nil || !h.Active(c.clock.Now()) {
		return err // no hold on
	}
	h.ClearedBy = who
	return c.setStorm(ctx, h, who)
}

func (c *Control) setStorm(ctx context.Context, h StormHold, by string) error {
	b, err := json.Marshal(map[string]any{"switch": stormKey, "by": by, "storm": h})
	if err != nil {
		return killswitch.Permanent(killswitch.ReasonInternal, err)
	}
	now := c.clock.Now()
	id := stormKey + "/" + strconv.FormatInt(h.Since.UnixNano(), 10) + "/" + strconv.FormatInt(h.Until.UnixNano(), 10) +
		"/" + strconv.Itoa(len(h.Vendors)) + "/" + by
	if _, err := c.ledger.Append(ctx, ledger.Entry{Type: ledger.TypeControl, ID: id, Time: now, Payload: b}); err != nil {
		return err
	}
	c.log.Warn("storm hold", zap.Strings("vendors", h.Vendors), zap.Time("until", h.Until), zap.String("by", by))
	return c.put(ctx, stormKey, h)
}

// Storm returns the storm hold (the zero hold when none was ever set).
func (c *Control) Storm(ctx context.Context) (StormHold, error) {
	var h StormHold
	_, _, err := c.read(ctx, stormKey, &h)
	return h, err
}

// StormGuard holds the destructive actions of the vendors of a detection storm (G7).
type StormGuard struct{ C *Control }

// Name implements Guard.
func (StormGuard) Name() string { return "storm" }

// Check implements Guard.
func (g StormGuard) Check(ctx context.Context, c Check) (string, error) {
	h, err := g.C.Storm(ctx)
	if err != nil || !h.Holds(c.Vendor, c.Now) {
		return "", err
	}
	return fmt.Sprintf("detection storm: %d vendors escalated together (%s); their destructive actions are held until %s",
		len(h.Vendors), strings.Join(h.Vendors, ", "), h.Until.UTC().Format(time.RFC3339)), nil
}
