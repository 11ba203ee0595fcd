package killswitch

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrInvalid is wrapped by every configuration and inventory validation error.
var ErrInvalid = errors.New("invalid configuration")

// Inventory is the vendor inventory, keyed by vendor name as it appears in telemetry.
// The zero Inventory is valid: vendors seen only in telemetry get default detectors and
// no credential is known to be revocable.
type Inventory map[string]Vendor

// Vendor returns the inventory entry of name, or nil when the vendor is known only from
// telemetry. The entry is a copy.
func (inv Inventory) Vendor(name string) *Vendor {
	v, ok := inv[name]
	if !ok {
		return nil
	}
	return &v
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
	// Sensitivity overrides the detectors' sensitivity for this vendor.
	Sensitivity float64 `yaml:"sensitivity"`
	// Caps are contract limits; exceeding one is a cap detection.
	Caps []Cap `yaml:"caps"`
	// Disable lists detector kinds turned off for this vendor.
	Disable []string `yaml:"disable"`
	// Mode overrides the global action mode for this vendor: enforce, shadow or dry-run.
	Mode Mode `yaml:"mode"`
	// Credentials the vendor holds, keyed by the name telemetry uses.
	Credentials map[string]Credential `yaml:"credentials"`
	// Vault says where in Vault the vendor holds more than the listed credentials: what
	// kill-vendor enumerates and cuts in one plan.
	Vault Holdings `yaml:"vault"`
}

// Holdings are the places in Vault where a vendor holds credentials that the inventory
// cannot list one by one: kill-vendor enumerates them when it plans (every secret-id of
// the AppRole roles, every lease under the prefixes, every version of the KV secrets)
// and cuts them with the listed credentials in one plan.
type Holdings struct {
	// Entity is the name of the vendor's identity entity. Disabling it cuts every token
	// of the entity, including those Vault cannot list (hashicorp/vault#7367).
	Entity string `yaml:"entity"`
	// AppRoles are the vendor's AppRole roles: every secret-id of each is destroyed.
	AppRoles []AppRoleRef `yaml:"approles"`
	// LeasePrefixes are prefixes of the vendor's leases (at least mount/creds/role, e.g.
	// database/creds/mailer): every lease under each is revoked.
	LeasePrefixes []string `yaml:"lease_prefixes"`
	// KV are the vendor's KV v2 secrets: each is rotated and its old versions destroyed.
	KV []KVRef `yaml:"kv"`
}

// Empty reports whether no holding is configured.
func (h Holdings) Empty() bool {
	return h.Entity == "" && len(h.AppRoles) == 0 && len(h.LeasePrefixes) == 0 && len(h.KV) == 0
}

// AppRoleRef names an AppRole role.
type AppRoleRef struct {
	// Mount is the AppRole auth mount (default "approle").
	Mount string `yaml:"mount"`
	// Role is the role name.
	Role string `yaml:"role"`
}

// KVRef names a KV v2 secret.
type KVRef struct {
	// Mount is the KV v2 mount (default "secret").
	Mount string `yaml:"mount"`
	// Path is the secret's path inside the mount.
	Path string `yaml:"path"`
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

// CredentialKind says how a credential is taken away.
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
	// CredEntity is a Vault identity entity, disabled to cut every token of it (Entity).
	CredEntity CredentialKind = "entity"
)

// Action returns the action type that takes a credential of kind k away, or "" for an
// unknown kind.
func (k CredentialKind) Action() ActionType {
	switch k {
	case CredTokenAccessor:
		return ActionRevokeTokenAccessor
	case CredAppRoleSecretID:
		return ActionDestroySecretID
	case CredLease:
		return ActionRevokeLease
	case CredLeasePrefix:
		return ActionRevokeLeasePrefix
	case CredKV:
		return ActionRotateKV
	case CredPolicy:
		return ActionQuarantinePolicy
	case CredEntity:
		return ActionDisableEntity
	}
	return ""
}

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
	// Entity is the identity entity's name (kind entity). For kind entity, Accessor may
	// name a token of the entity: Verify then proves the cut by that token being denied.
	Entity string `yaml:"entity"`
	// Protected credentials are never targeted by any action.
	Protected bool `yaml:"protected"`
	// ExpectedIdle marks a credential that is normally idle (break-glass, batch-only);
	// any traffic through it is a dormant-credential detection.
	ExpectedIdle bool `yaml:"expected_idle"`
}

// The reasons a credential cannot be the target of an action (see Vendor.Target).
var (
	// ErrNotInInventory: the vendor or the credential is not in the inventory.
	ErrNotInInventory = errors.New("credential is not in the vendor inventory")
	// ErrProtected: protected credentials are never targeted.
	ErrProtected = errors.New("protected credentials are never targeted")
	// ErrWrongKind: the action does not take a credential of this kind away.
	ErrWrongKind = errors.New("the action does not apply to this credential kind")
)

// Target returns the credential named name that action t would take away. It is the
// one check every stage makes before a destructive action: the credential must be in
// the inventory (ErrNotInInventory), not protected (ErrProtected), and of a kind that t
// takes away (ErrWrongKind). A nil Vendor (known only from telemetry) has no targets.
func (v *Vendor) Target(name string, t ActionType) (Credential, error) {
	if v == nil || name == "" {
		return Credential{}, fmt.Errorf("%q: %w", name, ErrNotInInventory)
	}
	c, ok := v.Credentials[name]
	switch {
	case !ok:
		return Credential{}, fmt.Errorf("%q: %w", name, ErrNotInInventory)
	case c.Protected:
		return c, fmt.Errorf("%q: %w", name, ErrProtected)
	case c.Kind.Action() != t:
		return c, fmt.Errorf("%w: a %s credential is not taken away by %s (use %s)", ErrWrongKind, c.Kind, t, c.Kind.Action())
	}
	return c, nil
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
	if v := f * mult; v < math.MaxInt64 {
		return ByteSize(v), nil
	}
	return 0, fmt.Errorf("%w: size %q: too large", ErrInvalid, s)
}

// Validate checks the inventory and returns every problem found, each naming its field
// (vendors.<name>.…) and wrapping ErrInvalid. Detector kinds named in Disable are
// checked by the detectors' settings.
func (inv Inventory) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
	}
	for _, name := range slices.Sorted(maps.Keys(inv)) {
		v := inv[name]
		f := "vendors." + name
		if strings.TrimSpace(name) == "" {
			bad("vendors: empty vendor name")
		}
		if v.Sensitivity < 0 {
			bad("%s.sensitivity: must not be negative, got %g", f, v.Sensitivity)
		}
		if !v.Mode.Valid() {
			bad("%s.mode: %q is not one of enforce, shadow, dry-run", f, v.Mode)
		}
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
		for _, cn := range slices.Sorted(maps.Keys(v.Credentials)) {
			if err := v.Credentials[cn].validate(); err != nil {
				bad("%s.credentials.%s: %v", f, cn, err)
			}
		}
		for _, err := range v.Vault.validate() {
			bad("%s.vault.%v", f, err)
		}
	}
	return errors.Join(errs...)
}

// validate checks the holdings: each as the credential of its kind would be.
func (h Holdings) validate() []error {
	var errs []error
	check := func(field string, c Credential) {
		if err := c.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
	}
	if h.Entity != "" {
		check("entity", Credential{Kind: CredEntity, Entity: h.Entity})
	}
	for i, r := range h.AppRoles {
		if strings.TrimSpace(r.Role) == "" || strings.ContainsAny(r.Role+r.Mount, "*?/") {
			errs = append(errs, fmt.Errorf("approles[%d]: a role name (no wildcard, no slash) is required, got %q", i, r.Role))
		}
	}
	for i, p := range h.LeasePrefixes {
		check(fmt.Sprintf("lease_prefixes[%d]", i), Credential{Kind: CredLeasePrefix, LeasePrefix: p})
	}
	for i, kv := range h.KV {
		check(fmt.Sprintf("kv[%d]", i), Credential{Kind: CredKV, Mount: kv.Mount, Path: kv.Path})
	}
	return errs
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
	case CredEntity:
		return need("entity", c.Entity)
	case "":
		return errors.New("kind is required (token, approle_secret_id, lease, lease_prefix, kv, policy, entity)")
	default:
		return fmt.Errorf("unknown kind %q (token, approle_secret_id, lease, lease_prefix, kv, policy, entity)", c.Kind)
	}
}
