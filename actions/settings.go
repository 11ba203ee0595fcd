package actions

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/killswitch-dev/killswitch"
)

// Settings configures the guard rails in front of every action (the `actions:` section
// of the configuration). Zero values mean the documented default.
type Settings struct {
	// Mode is the global action mode: enforce, shadow or dry-run. Default enforce (the
	// service runs in dry-run when no Vault is configured).
	Mode killswitch.Mode `yaml:"mode"`
	// Budget is how many destructive actions may run fleet-wide per BudgetWindow before
	// the circuit breaker opens into approval-only mode. Default 10.
	Budget int `yaml:"budget"`
	// BudgetWindow is the budget's window. Default 1h.
	BudgetWindow time.Duration `yaml:"budget_window"`
	// VendorBudget bounds destructive actions per vendor per BudgetWindow (blast
	// radius); beyond it actions are held for approval. Default 8.
	VendorBudget int `yaml:"vendor_budget"`
	// Cooldown holds a destructive action on a credential acted on by another incident
	// less than this ago. Default 10m.
	Cooldown time.Duration `yaml:"cooldown"`
	// Attempts bounds the attempts of one Vault call on retryable errors. Default 5.
	Attempts int `yaml:"attempts"`
	// CallTimeout is the deadline of every call. Default 5s.
	CallTimeout time.Duration `yaml:"call_timeout"`
	// ApprovalTTL is how long a held action may be approved. Default 1h.
	ApprovalTTL time.Duration `yaml:"approval_ttl"`
	// ClaimStale is how old an unfinished idempotency claim must be before another
	// instance reconciles it (the claimer crashed). Default 30s.
	ClaimStale time.Duration `yaml:"claim_stale"`
	// Webhooks are the endpoints webhook actions may name.
	Webhooks map[string]Webhook `yaml:"webhooks"`
	// PlanOnly runs every guard rail as in enforce mode but applies nothing: destructive
	// actions that pass the guards are recorded as planned (replay without a Vault). Not
	// configurable.
	PlanOnly bool `yaml:"-"`
}

// defaults fills the documented defaults of zero fields.
func (a *Settings) defaults() {
	if a.Mode == "" {
		a.Mode = killswitch.ModeEnforce
	}
	for _, f := range []struct {
		v   *int
		def int
	}{{&a.Budget, 10}, {&a.VendorBudget, 8}, {&a.Attempts, 5}} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&a.BudgetWindow, time.Hour}, {&a.Cooldown, 10 * time.Minute}, {&a.CallTimeout, 5 * time.Second},
		{&a.ApprovalTTL, time.Hour}, {&a.ClaimStale, 30 * time.Second}} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
}

// Webhook is an endpoint for the webhook action.
type Webhook struct {
	// URL receives a POST of the incident and decision as JSON.
	URL string `yaml:"url"`
	// SecretEnv names the environment variable holding the HMAC-SHA256 signing key; the
	// signature goes in the X-Killswitch-Signature header as sha256=<hex>.
	SecretEnv string `yaml:"secret_env"`
	// Timeout bounds one delivery. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
}

// Validate checks the settings and returns every problem found, each naming its field
// and wrapping killswitch.ErrInvalid.
func (a *Settings) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{killswitch.ErrInvalid}, args...)...))
	}
	if !a.Mode.Valid() {
		bad("actions.mode: %q is not one of enforce, shadow, dry-run", a.Mode)
	}
	for name, v := range map[string]int{"actions.budget": a.Budget, "actions.vendor_budget": a.VendorBudget, "actions.attempts": a.Attempts} {
		if v < 0 {
			bad("%s: must not be negative, got %d", name, v)
		}
	}
	for name, v := range map[string]time.Duration{"actions.budget_window": a.BudgetWindow, "actions.cooldown": a.Cooldown,
		"actions.call_timeout": a.CallTimeout, "actions.approval_ttl": a.ApprovalTTL, "actions.claim_stale": a.ClaimStale} {
		if v < 0 {
			bad("%s: must not be negative, got %s", name, v)
		}
	}
	for name, w := range a.Webhooks {
		if u, err := url.Parse(w.URL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			bad("actions.webhooks.%s.url: %q is not an http(s) URL", name, w.URL)
		}
	}
	return errors.Join(errs...)
}
