package vault

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
)

//go:embed killswitch-policy.hcl
var examplePolicy string

// ShippedPolicy returns the example policy shipped with Killswitch
// (killswitch-policy.hcl): PolicyFor the example inventory in
// testdata/example-inventory.yaml, kept in sync by a golden test. It shows the shape of
// a scoped policy; it is no policy to grant, since it names the example's accessors,
// leases, paths and policies. Grant PolicyFor your own inventory
// (`killswitch vault policy --config FILE`).
func ShippedPolicy() string { return examplePolicy }

// Requirement is one capability set the kill switch's token needs on one path.
type Requirement struct {
	// Path is the Vault API path, exact (no glob, no + segment).
	Path string
	// Capabilities are the capabilities needed on it, sorted.
	Capabilities []string
	// Params, when not nil, pins the request parameters (allowed_parameters): each
	// listed parameter may take only the listed values, sorted (an empty list: any
	// value), and every other parameter is denied.
	Params map[string][]string
	// For says which action (and credential) needs it.
	For []string
}

// Requirements lists what the token needs for the inventory: the token's own upkeep,
// and for every credential that is not protected, the exact paths its action type
// calls, with the parameters pinned to the inventory's values where the path takes the
// credential as a parameter (accessors, secret-id accessors, lease IDs). Protected
// credentials are never targeted, so they need nothing.
//
// A vendor's Vault holdings (Vendor.Vault) add what kill-vendor (Enumerate, then the
// executors) and restore need: for each AppRole role, listing its secret-ids, looking up
// and destroying any secret-id accessor of that role (Vault refuses an accessor of
// another role on these paths), and generating a secret-id whose only parameter is
// metadata (ReissueSecretID); for each lease prefix, listing and revoking it; for each
// KV secret, rotating it (KV) and writing a new version (ReissueKV); for the entity,
// reading identity/entity/name/<name> and updating it with the parameter disabled only
// (nothing else of the entity can change), looking up the vendor's token accessors
// (Enumerate finds the entity's tokens; protected ones included, to refuse cutting
// them) and sys/capabilities-accessor on its non-protected ones (Entity.Verify's
// proof); and sys/wrapping/wrap and sys/wrapping/lookup for the wrapped handovers
// (also for every KV credential, which restore re-issues with ReissueKV).
func Requirements(inv killswitch.Inventory) []Requirement {
	need := map[string]*Requirement{}
	add := func(path, why string, caps ...string) *Requirement {
		r := need[path]
		if r == nil {
			r = &Requirement{Path: path}
			need[path] = r
		}
		for _, c := range caps {
			if !slices.Contains(r.Capabilities, c) {
				r.Capabilities = append(r.Capabilities, c)
			}
		}
		if !slices.Contains(r.For, why) {
			r.For = append(r.For, why)
		}
		return r
	}
	// pin allows param with the values (none: any value) on r.
	pin := func(r *Requirement, param string, values ...string) {
		if r.Params == nil {
			r.Params = map[string][]string{}
		}
		have, ok := r.Params[param]
		if !ok {
			have = []string{}
		}
		for _, v := range values {
			if !slices.Contains(have, v) {
				have = append(have, v)
			}
		}
		r.Params[param] = have
	}
	// anyValue marks a parameter that takes any value: it wins over every pin.
	anyValue := map[[2]string]bool{}
	pinAny := func(r *Requirement, param string) {
		pin(r, param)
		anyValue[[2]string{r.Path, param}] = true
	}
	kv := func(why, mount, path string) {
		mount = strings.Trim(mount, "/")
		if mount == "" {
			mount = "secret"
		}
		p := strings.Trim(path, "/")
		add(mount+"/data/"+p, why, "read", "update")
		add(mount+"/metadata/"+p, why, "read", "patch")
		add(mount+"/destroy/"+p, why, "update")
	}
	prefix := func(why, prefix string) {
		p := strings.Trim(prefix, "/")
		add("sys/leases/lookup/"+p+"/", why, "list", "sudo")
		pin(add("sys/leases/revoke-prefix/"+p, why, "update", "sudo"), "sync")
	}
	entity := func(why, name string) {
		pin(add("identity/entity/name/"+name, why, "read", "update"), "disabled")
	}
	proof := func(why, accessor string) {
		pin(add("auth/token/lookup-accessor", why, "update"), "accessor", accessor)
		r := add("sys/capabilities-accessor", why, "update")
		pin(r, "accessor", accessor)
		pin(r, "paths")
	}
	add("auth/token/lookup-self", "token upkeep", "read")
	add("auth/token/renew-self", "token upkeep", "update")
	add("sys/capabilities-self", "start-up capability check", "update")
	for vendor, v := range inv {
		for name, c := range v.Credentials {
			if c.Protected {
				continue
			}
			why := vendor + "/" + name
			switch c.Kind {
			case killswitch.CredTokenAccessor:
				pin(add("auth/token/lookup-accessor", why, "update"), "accessor", c.Accessor)
				pin(add("auth/token/revoke-accessor", why, "update"), "accessor", c.Accessor)
			case killswitch.CredAppRoleSecretID:
				base := approleBase(c.Mount, c.Role)
				pin(add(base+"lookup", why, "update"), "secret_id_accessor", c.SecretIDAccessor)
				pin(add(base+"destroy", why, "update"), "secret_id_accessor", c.SecretIDAccessor)
			case killswitch.CredLease:
				pin(add("sys/leases/lookup", why, "update"), "lease_id", c.LeaseID)
				r := add("sys/leases/revoke", why, "update")
				pin(r, "lease_id", c.LeaseID)
				pin(r, "sync")
			case killswitch.CredLeasePrefix:
				prefix(why, c.LeasePrefix)
			case killswitch.CredKV:
				kv(why, c.Mount, c.Path)
				// ReissueKV hands the new version over wrapped.
				add("sys/wrapping/wrap", why, "update")
				add("sys/wrapping/lookup", why, "update")
			case killswitch.CredPolicy:
				add("sys/policies/acl/"+c.Policy, why, "read", "update")
			case killswitch.CredEntity:
				entity(why, c.Entity)
				if c.Accessor != "" {
					proof(why, c.Accessor)
				}
			}
		}
		h := v.Vault
		why := vendor + " (vault holdings)"
		for _, ref := range h.AppRoles {
			base := approleBase(ref.Mount, ref.Role)
			pinAny(add(strings.TrimSuffix(base, "secret-id-accessor/")+"secret-id", why, "list", "update"), "metadata")
			pinAny(add(base+"lookup", why, "update"), "secret_id_accessor")
			pinAny(add(base+"destroy", why, "update"), "secret_id_accessor")
		}
		for _, p := range h.LeasePrefixes {
			if strings.Trim(p, "/") != "" {
				prefix(why, p)
			}
		}
		for _, ref := range h.KV {
			if strings.Trim(ref.Path, "/") != "" {
				kv(why, ref.Mount, ref.Path)
			}
		}
		if len(h.AppRoles) > 0 || len(h.KV) > 0 {
			add("sys/wrapping/wrap", why, "update")
			add("sys/wrapping/lookup", why, "update")
		}
		if h.Entity != "" {
			entity(why, h.Entity)
			for _, c := range v.Credentials {
				if c.Kind != killswitch.CredTokenAccessor || c.Accessor == "" {
					continue
				}
				if c.Protected {
					pin(add("auth/token/lookup-accessor", why, "update"), "accessor", c.Accessor)
				} else {
					proof(why, c.Accessor)
				}
			}
		}
	}
	out := make([]Requirement, 0, len(need))
	for _, r := range need {
		slices.Sort(r.Capabilities)
		slices.Sort(r.For)
		for param, v := range r.Params {
			if anyValue[[2]string{r.Path, param}] {
				r.Params[param] = []string{}
				continue
			}
			slices.Sort(v)
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Requirement) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// approleBase is the secret-id-accessor path prefix of an AppRole role.
func approleBase(mount, role string) string {
	mount = strings.Trim(mount, "/")
	if mount == "" {
		mount = "approle"
	}
	return "auth/" + mount + "/role/" + role + "/secret-id-accessor/"
}

// ErrUnsafePolicyValue is returned by PolicyFor when an inventory value cannot be put
// in a policy exactly: a glob (* or +), a quote, a space or another character outside
// letters, digits and . _ - / @ : (a lease ID, accessor, path or policy name never
// needs one), or a .. segment. Permanent: fix the inventory.
var ErrUnsafePolicyValue = errors.New("inventory value cannot be written into a Vault policy exactly")

// safeValue reports whether s can stand in a policy as an exact path or parameter value.
func safeValue(s string) bool {
	if s == "" || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("._-/@:", r):
		default:
			return false
		}
	}
	return true
}

// PolicyFor renders the tightest policy for the inventory: exactly the paths of
// Requirements, each commented with the credentials that need it, with
// allowed_parameters pinning revoke-accessor and lookup-accessor to the inventory's
// accessors, secret-id destruction to its secret-id accessors (or to the vendor's roles
// for its holdings), lease revocation to its lease IDs and entity updates to the
// disabled flag. It returns ErrUnsafePolicyValue (permanent) when an inventory value
// cannot be written exactly.
func PolicyFor(inv killswitch.Inventory) (string, error) {
	reqs := Requirements(inv)
	var bad []string
	for _, r := range reqs {
		if !safeValue(strings.TrimSuffix(r.Path, "/")) {
			bad = append(bad, fmt.Sprintf("path %q (%s)", r.Path, strings.Join(r.For, ", ")))
		}
		for _, param := range slices.Sorted(maps.Keys(r.Params)) {
			for _, v := range r.Params[param] {
				if !safeValue(v) {
					bad = append(bad, fmt.Sprintf("%s value for %s (%s)", param, r.Path, strings.Join(r.For, ", ")))
				}
			}
		}
	}
	if len(bad) > 0 {
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault policy: %w: %s", ErrUnsafePolicyValue, strings.Join(bad, "; ")))
	}
	var b strings.Builder
	b.WriteString("# The Vault policy killswitch needs for this vendor inventory, and nothing more: exact\n")
	b.WriteString("# paths, and the accessors, secret-id accessors and lease IDs it may revoke pinned with\n")
	b.WriteString("# allowed_parameters. Generated by `killswitch vault policy --config FILE`; regenerate\n")
	b.WriteString("# and write it again whenever the inventory changes (`killswitch run` refuses a token\n")
	b.WriteString("# that can do more than this policy, and one that lacks what it needs).\n")
	for _, r := range reqs {
		fmt.Fprintf(&b, "\n# %s\npath %q {\n  capabilities = [%s]\n", strings.Join(r.For, ", "), r.Path, quoteAll(r.Capabilities))
		if r.Params != nil {
			b.WriteString("  allowed_parameters = {\n")
			for _, param := range slices.Sorted(maps.Keys(r.Params)) {
				fmt.Fprintf(&b, "    %q = [%s]\n", param, quoteAll(r.Params[param]))
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	return b.String(), nil
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

// ErrMissingCapabilities is returned by CheckCapabilities when the token cannot do what
// the inventory needs.
var ErrMissingCapabilities = errors.New("the Vault token lacks capabilities the configured actions need")

// CheckCapabilities asks Vault (sys/capabilities-self) what the client's token may do on
// every path the inventory needs. It returns ErrMissingCapabilities naming each missing
// capability, and root=true when the token holds root (which works, but is far more
// than the kill switch should hold: the caller should warn).
func CheckCapabilities(ctx context.Context, client *api.Client, inv killswitch.Inventory) (root bool, err error) {
	reqs := Requirements(inv)
	paths := make([]string, len(reqs))
	for i, r := range reqs {
		paths[i] = r.Path
	}
	c := &caller{c: client}
	r, err := c.call(ctx, http.MethodPut, "sys/capabilities-self", map[string]any{"paths": paths})
	if err != nil {
		return false, fmt.Errorf("vault: check capabilities: %w", err)
	}
	if !r.ok() {
		return false, fmt.Errorf("vault: check capabilities: %w", fail("sys/capabilities-self", r, nil))
	}
	var missing []string
	root = len(reqs) > 0
	for _, req := range reqs {
		has := strs(r.data, req.Path)
		if !slices.Contains(has, "root") {
			root = false
		} else {
			continue
		}
		var lacks []string
		for _, want := range req.Capabilities {
			if !slices.Contains(has, want) {
				lacks = append(lacks, want)
			}
		}
		if len(lacks) > 0 {
			missing = append(missing, fmt.Sprintf("%s: needs %s for %s (has %v)", req.Path, strings.Join(lacks, ","), strings.Join(req.For, ", "), has))
		}
	}
	if len(missing) > 0 {
		return false, fmt.Errorf("%w (grant the policy printed by `killswitch vault policy`):\n  %s", ErrMissingCapabilities, strings.Join(missing, "\n  "))
	}
	return root, nil
}
