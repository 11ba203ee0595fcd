// Package config loads and validates the Killswitch configuration: the vendor inventory
// (which credentials each vendor holds and how each is revoked), detector settings and
// the service settings. Decoding is strict (unknown fields are errors) and every error
// names the offending field.
//
// The zero Config is valid: vendors and credentials seen in telemetry get default
// detectors, and no credential is known to be revocable.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid configuration")

// Config is the whole configuration file.
type Config struct {
	// Detectors holds the defaults every vendor inherits.
	Detectors Detectors `yaml:"detectors"`
	// Vendors is the vendor inventory, keyed by vendor name as it appears in telemetry.
	Vendors map[string]Vendor `yaml:"vendors"`
	// Service configures `killswitch run`: NATS, Vault and the HTTP API.
	Service Service `yaml:"service"`
	// Actions configures the guard rails and the webhook endpoints.
	Actions Actions `yaml:"actions"`
}

// Detectors configures the streaming detectors. Zero values mean the documented default.
type Detectors struct {
	// Interval is the bucket width for volume detectors (spike, sustained). Default 5m.
	Interval time.Duration `yaml:"interval"`
	// AllowedLateness is how far behind the watermark an event may arrive and still be
	// counted in its bucket. Default 1m.
	AllowedLateness time.Duration `yaml:"allowed_lateness"`
	// Sensitivity scales every detector: 2 makes them twice as eager, 0.5 half. Default 1.
	Sensitivity float64 `yaml:"sensitivity"`
	// Disable lists detector kinds turned off for everyone.
	Disable []string `yaml:"disable"`
	// LearningPeriod is how long a key is observed before the spike, sustained and new
	// destination detectors may fire for it. Default 24h.
	LearningPeriod time.Duration `yaml:"learning_period"`
	// DormantAfter is how long a credential must be idle to count as dormant. Default 168h.
	DormantAfter time.Duration `yaml:"dormant_after"`
	// SilenceAfter is how long a vendor may send nothing before a silence alert. Default 30m.
	SilenceAfter time.Duration `yaml:"silence_after"`
	// MinBytes is the smallest interval volume a spike may be raised for. Default 1 MiB.
	MinBytes ByteSize `yaml:"min_bytes"`
}

// Vendor is one entry of the vendor inventory.
type Vendor struct {
	// Description says who the vendor is, for humans.
	Description string `yaml:"description"`
	// Owner is the team that owns the relationship.
	Owner string `yaml:"owner"`
	// CIDRs are the vendor's network ranges; flow-log records whose destination falls in
	// one are attributed to this vendor.
	CIDRs []netip.Prefix `yaml:"cidrs"`
	// AllowedDestinations are the destinations (addresses, CIDRs or host names) the vendor
	// is expected to send to. When set, traffic elsewhere is a new-destination detection
	// from the first byte; when empty, destinations are learned.
	AllowedDestinations []string `yaml:"allowed_destinations"`
	// Sensitivity overrides Detectors.Sensitivity for this vendor.
	Sensitivity float64 `yaml:"sensitivity"`
	// Caps are contract limits; exceeding one is a cap detection.
	Caps []Cap `yaml:"caps"`
	// Disable lists detector kinds turned off for this vendor.
	Disable []string `yaml:"disable"`
	// Mode overrides the global action mode for this vendor: enforce, shadow or dry-run.
	Mode string `yaml:"mode"`
	// Credentials the vendor holds, keyed by the name telemetry uses.
	Credentials map[string]Credential `yaml:"credentials"`
}

// Cap is a contract limit on what a vendor (or one credential) may send per interval.
type Cap struct {
	// Credential restricts the cap to one credential; empty applies it to the vendor total.
	Credential string `yaml:"credential"`
	// Bytes is the limit in bytes per interval; 0 means no byte limit.
	Bytes ByteSize `yaml:"bytes"`
	// Records is the limit in records per interval; 0 means no record limit.
	Records int64 `yaml:"records"`
	// Per is the interval the limit applies to (a tumbling window aligned to the epoch).
	Per time.Duration `yaml:"per"`
}

// CredentialKind says how a credential is revoked.
type CredentialKind string

// The credential kinds and the identity each needs.
const (
	// CredTokenAccessor is a Vault token, revoked by its accessor (Accessor).
	CredTokenAccessor CredentialKind = "token"
	// CredAppRoleSecretID is an AppRole secret-id, destroyed by accessor (Role, SecretIDAccessor).
	CredAppRoleSecretID CredentialKind = "approle_secret_id"
	// CredLease is one Vault lease (LeaseID).
	CredLease CredentialKind = "lease"
	// CredLeasePrefix is every lease under a prefix, e.g. database/creds/<role> (LeasePrefix).
	CredLeasePrefix CredentialKind = "lease_prefix"
	// CredKV is a static secret in KV v2, rotated (Mount, Path).
	CredKV CredentialKind = "kv"
	// CredPolicy is an ACL policy that can be quarantined (Policy).
	CredPolicy CredentialKind = "policy"
)

// Credential says how one vendor credential is identified in Vault.
type Credential struct {
	// Kind says how the credential is revoked.
	Kind CredentialKind `yaml:"kind"`
	// Accessor is the token accessor (kind token).
	Accessor string `yaml:"accessor"`
	// Role is the AppRole role name (kind approle_secret_id).
	Role string `yaml:"role"`
	// SecretIDAccessor is the secret-id accessor (kind approle_secret_id).
	SecretIDAccessor string `yaml:"secret_id_accessor"`
	// LeaseID is the exact lease (kind lease).
	LeaseID string `yaml:"lease_id"`
	// LeasePrefix is the lease prefix (kind lease_prefix).
	LeasePrefix string `yaml:"lease_prefix"`
	// Mount is the KV v2 mount (kind kv, default "secret") or the AppRole auth mount
	// (kind approle_secret_id, default "approle").
	Mount string `yaml:"mount"`
	// Path is the secret path inside the mount (kind kv).
	Path string `yaml:"path"`
	// Policy is the ACL policy name (kind policy).
	Policy string `yaml:"policy"`
	// Protected credentials are never targeted by any action.
	Protected bool `yaml:"protected"`
	// ExpectedIdle marks a credential that is normally idle (break-glass, batch-only);
	// any traffic through it is a dormant-credential detection.
	ExpectedIdle bool `yaml:"expected_idle"`
}

// ByteSize is a size in bytes that reads "10GiB", "500MB", "1024" or a plain integer.
type ByteSize int64

// UnmarshalYAML parses a ByteSize.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize parses sizes such as "10GiB", "1.5GB", "512k" or "1024".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%w: size %q: want a non-negative number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)", ErrInvalid, s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1e3, "kb": 1e3, "kib": 1 << 10,
		"m": 1e6, "mb": 1e6, "mib": 1 << 20,
		"g": 1e9, "gb": 1e9, "gib": 1 << 30,
		"t": 1e12, "tb": 1e12, "tib": 1 << 40,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%w: size %q: unknown unit %q", ErrInvalid, s, unit)
	}
	return ByteSize(f * mult), nil
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a YAML configuration strictly (unknown fields are errors) and validates it.
// An empty document is the zero Config.
func Parse(r io.Reader) (*Config, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the configuration and returns every problem found, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
	}
	d := c.Detectors
	for name, v := range map[string]time.Duration{
		"detectors.interval": d.Interval, "detectors.allowed_lateness": d.AllowedLateness,
		"detectors.learning_period": d.LearningPeriod, "detectors.dormant_after": d.DormantAfter,
		"detectors.silence_after": d.SilenceAfter,
	} {
		if v < 0 {
			bad("%s: must not be negative, got %s", name, v)
		}
	}
	if d.Interval != 0 && d.Interval < time.Second {
		bad("detectors.interval: must be at least 1s, got %s", d.Interval)
	}
	if d.Sensitivity < 0 {
		bad("detectors.sensitivity: must not be negative, got %g", d.Sensitivity)
	}
	checkKinds := func(field string, kinds []string) {
		for _, k := range kinds {
			if !knownKinds[k] {
				bad("%s: unknown detector kind %q (known: cap, spike, sustained, new_destination, dormant_credential, silence)", field, k)
			}
		}
	}
	checkKinds("detectors.disable", d.Disable)
	c.Service.validate(bad)
	c.Actions.validate(bad)
	names := slices.Sorted(maps.Keys(c.Vendors))
	for _, name := range names {
		v := c.Vendors[name]
		f := "vendors." + name
		if strings.TrimSpace(name) == "" {
			bad("vendors: empty vendor name")
		}
		if v.Sensitivity < 0 {
			bad("%s.sensitivity: must not be negative, got %g", f, v.Sensitivity)
		}
		switch v.Mode {
		case "", "enforce", "shadow", "dry-run":
		default:
			bad("%s.mode: %q is not one of enforce, shadow, dry-run", f, v.Mode)
		}
		checkKinds(f+".disable", v.Disable)
		for i, cp := range v.Caps {
			cf := fmt.Sprintf("%s.caps[%d]", f, i)
			if cp.Per <= 0 {
				bad("%s.per: must be a positive duration", cf)
			}
			if cp.Bytes <= 0 && cp.Records <= 0 {
				bad("%s: set bytes or records (or both)", cf)
			}
			if cp.Bytes < 0 || cp.Records < 0 {
				bad("%s: limits must not be negative", cf)
			}
			if cp.Credential != "" {
				if _, ok := v.Credentials[cp.Credential]; !ok {
					bad("%s.credential: %q is not a credential of vendor %s", cf, cp.Credential, name)
				}
			}
		}
		for i, dst := range v.AllowedDestinations {
			if strings.TrimSpace(dst) == "" {
				bad("%s.allowed_destinations[%d]: empty", f, i)
			}
		}
		credNames := slices.Sorted(maps.Keys(v.Credentials))
		for _, cn := range credNames {
			if err := v.Credentials[cn].validate(); err != nil {
				bad("%s.credentials.%s: %v", f, cn, err)
			}
		}
	}
	return errors.Join(errs...)
}

var knownKinds = map[string]bool{
	"cap": true, "spike": true, "sustained": true, "new_destination": true,
	"dormant_credential": true, "silence": true,
}

func (c Credential) validate() error {
	need := func(field, v string) error {
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("kind %s needs %s", c.Kind, field)
		}
		if strings.ContainsAny(v, "*?") {
			return fmt.Errorf("%s: wildcards are not allowed", field)
		}
		return nil
	}
	switch c.Kind {
	case CredTokenAccessor:
		return need("accessor", c.Accessor)
	case CredAppRoleSecretID:
		return errors.Join(need("role", c.Role), need("secret_id_accessor", c.SecretIDAccessor))
	case CredLease:
		return need("lease_id", c.LeaseID)
	case CredLeasePrefix:
		if err := need("lease_prefix", c.LeasePrefix); err != nil {
			return err
		}
		if strings.Count(strings.Trim(c.LeasePrefix, "/"), "/") < 2 {
			return fmt.Errorf("lease_prefix %q is too broad: name at least mount/creds/role", c.LeasePrefix)
		}
		return nil
	case CredKV:
		return need("path", c.Path)
	case CredPolicy:
		if err := need("policy", c.Policy); err != nil {
			return err
		}
		if c.Policy == "root" || c.Policy == "default" {
			return fmt.Errorf("policy %q cannot be quarantined", c.Policy)
		}
		return nil
	case "":
		return errors.New("kind is required (token, approle_secret_id, lease, lease_prefix, kv, policy)")
	default:
		return fmt.Errorf("unknown kind %q (token, approle_secret_id, lease, lease_prefix, kv, policy)", c.Kind)
	}
}

// Actions configures the guard rails in front of every action. Zero values mean the
// documented default.
type Actions struct {
	// Mode is the global action mode: enforce, shadow or dry-run. Default enforce (the
	// service runs in dry-run when no Vault is configured).
	Mode string `yaml:"mode"`
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

// validate checks the action settings, reporting through bad.
func (a *Actions) validate(bad func(format string, args ...any)) {
	switch a.Mode {
	case "", "enforce", "shadow", "dry-run":
	default:
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
}
