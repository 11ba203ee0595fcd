package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
)

// ErrRootToken is wrapped by Scope.Err for a root token.
var ErrRootToken = errors.New("the Vault token is a root token")

// ErrBroadToken is wrapped by Scope.Err for a token that can do more than the
// inventory's policy (PolicyFor) grants.
var ErrBroadToken = errors.New("the Vault token can do more than the inventory's policy grants")

// Scope is what CheckScope found out about a token.
type Scope struct {
	// Root reports a root token (it can do anything; nothing else was probed).
	Root bool
	// Excess lists, one line each, what the token can do beyond the inventory's policy.
	// Random probe names are shown as <probe>.
	Excess []string
}

// Broad reports a token that can do more than the inventory's policy.
func (s Scope) Broad() bool { return s.Root || len(s.Excess) > 0 }

// Err returns nil for a scoped token, and otherwise an error wrapping ErrRootToken or
// ErrBroadToken that lists what the token can do beyond the policy. Permanent: the
// token does not change by retrying.
func (s Scope) Err() error {
	switch {
	case s.Root:
		return killswitch.Permanent(killswitch.ReasonDenied, fmt.Errorf("vault: %w: it can revoke, read and rewrite anything in Vault", ErrRootToken))
	case len(s.Excess) > 0:
		return killswitch.Permanent(killswitch.ReasonDenied, fmt.Errorf("vault: %w:\n  %s", ErrBroadToken, strings.Join(s.Excess, "\n  ")))
	}
	return nil
}

// probeFor is the random name part of one CheckScope run: no real token, lease,
// policy or secret has it.
type probeFor string

func (p probeFor) name() string { return "killswitch-probe-" + string(p) }

// shown replaces the random part in s by <probe>.
func (p probeFor) shown(s string) string { return strings.ReplaceAll(s, p.name(), "<probe>") }

// outsidePaths are paths no inventory policy grants: token creation and revocation by
// other means, policies, mounts, auth methods, audit, raw storage, forced revocation,
// identities, secret-id generation, database engines, and a top-level path that only
// a "*" policy matches.
func (p probeFor) outsidePaths(inv killswitch.Inventory) []string {
	n := p.name()
	paths := []string{
		n, n + "/" + n,
		"auth/token/create", "auth/token/create-orphan", "auth/token/revoke", "auth/token/revoke-orphan",
		"auth/token/roles/" + n, "auth/token/revoke-accessor/" + n, "auth/token/lookup-accessor/" + n, "auth/token/lookup",
		"sys/policies/acl/" + n, "sys/policy/" + n, "sys/mounts/" + n, "sys/auth/" + n, "sys/audit/" + n,
		"sys/raw/" + n, "sys/seal", "sys/rotate", "sys/leases/revoke-force/" + n, "sys/leases/revoke-prefix/" + n,
		"sys/leases/revoke/" + n, "sys/leases/lookup/" + n + "/", "sys/revoke-prefix/" + n,
		"identity/entity/id/" + n, "identity/entity/name/" + n,
		"auth/approle/role/" + n, "auth/approle/role/" + n + "/secret-id", "auth/approle/role/" + n + "/secret-id-accessor/destroy",
		"database/creds/" + n, "database/config/" + n, "database/roles/" + n,
		"secret/data/" + n, "secret/metadata/" + n, "secret/destroy/" + n, "secret/delete/" + n,
	}
	for _, v := range inv {
		for _, ref := range v.Vault.AppRoles {
			// The role itself and its role-id, next to the granted secret-id paths.
			base := strings.TrimSuffix(approleBase(ref.Mount, ref.Role), "secret-id-accessor/")
			paths = append(paths, base+"role-id", strings.TrimSuffix(base, "/"))
		}
		for _, c := range v.Credentials {
			switch c.Kind {
			case killswitch.CredKV:
				mount := strings.Trim(c.Mount, "/")
				if mount == "" {
					mount = "secret"
				}
				for _, op := range []string{"data", "metadata", "destroy", "delete", "undelete"} {
					paths = append(paths, mount+"/"+op+"/"+n)
				}
			case killswitch.CredAppRoleSecretID:
				// Minting new secret-ids, or reading the role-id, of a guarded role.
				base := strings.TrimSuffix(approleBase(c.Mount, c.Role), "secret-id-accessor/")
				paths = append(paths, base+"secret-id", base+"role-id", strings.TrimSuffix(base, "/"))
			}
		}
	}
	return paths
}

// siblings are paths next to a granted one that a glob would also match:
// path-<probe> (catches vendor-* and api*), dir/<probe> (catches dir/* and dir/+).
func (p probeFor) siblings(granted string) []string {
	dirSlash := strings.HasSuffix(granted, "/")
	g := strings.TrimSuffix(granted, "/")
	out := []string{g + "-" + p.name()}
	if dir := path.Dir(g); dir != "." {
		out = append(out, dir+"/"+p.name())
	}
	if dirSlash {
		for i := range out {
			out[i] += "/"
		}
	}
	return out
}

// paramProbe is a request that a scoped token is denied (its parameter value is not
// allowed) and that a broad token may make without changing anything, because no
// credential has the made-up value.
type paramProbe struct {
	path, param, what string
	// value is the made-up value sent; nil: the probe name.
	value any
}

// CheckScope finds out, changing nothing, whether the client's token can do more than
// PolicyFor(inv) grants:
//
//   - a root token (lookup-self) is reported at once;
//   - sys/capabilities-self on every path the policy grants must answer no capability
//     beyond the policy's, and on paths outside it (token creation, other policies,
//     other KV paths, mounts, forced revocation, a sibling of every granted path that a
//     glob would match…) nothing but deny;
//   - allowed_parameters are invisible to sys/capabilities-self, so every path that
//     takes a credential as a parameter (lookup-accessor, revoke-accessor, secret-id
//     lookup and destroy, sys/leases/revoke, sys/capabilities-accessor) is called with a
//     made-up value that no credential has: a scoped token gets 403, a broad one any
//     other answer from past the ACL (invalid accessor, no such lease, even a 500 for a
//     role that does not exist), and nothing is revoked since nothing has that value;
//     the entity's path is sent metadata and a holdings role's secret-id generation a
//     num_uses that fail Vault's field validation (400, nothing written or issued)
//     where a pinned token gets 403.
//
// Paths Vault's default policy grants (sys/leases/lookup, cubbyhole, wrapping…) are not
// held against the token. Transport errors and 5xx are returned as errors (retryable):
// the scope is then unknown.
func CheckScope(ctx context.Context, client *api.Client, inv killswitch.Inventory) (Scope, error) {
	c := &caller{c: client}
	r, err := c.call(ctx, http.MethodGet, "auth/token/lookup-self", nil)
	if err != nil {
		return Scope{}, fmt.Errorf("vault: check scope: %w", err)
	}
	if !r.ok() {
		return Scope{}, fmt.Errorf("vault: check scope: %w", fail("auth/token/lookup-self", r, nil))
	}
	if slices.Contains(strs(r.data, "policies"), "root") {
		return Scope{Root: true}, nil
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Scope{}, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("vault: check scope: %w", err))
	}
	p := probeFor(hex.EncodeToString(nonce[:]))

	reqs := Requirements(inv)
	granted := map[string]Requirement{}
	for _, req := range reqs {
		granted[req.Path] = req
	}
	var probes []string
	seen := map[string]bool{}
	addProbe := func(ps ...string) {
		for _, x := range ps {
			if _, g := granted[x]; !g && !seen[x] {
				seen[x] = true
				probes = append(probes, x)
			}
		}
	}
	addProbe(p.outsidePaths(inv)...)
	for _, req := range reqs {
		addProbe(p.siblings(req.Path)...)
	}
	// Parameter paths the inventory does not need at all are plain probes.
	addProbe("auth/token/revoke-accessor", "auth/token/lookup-accessor", "sys/leases/revoke", "sys/capabilities-accessor")
	paths := slices.Concat(slices.Sorted(func(yield func(string) bool) {
		for k := range granted {
			if !yield(k) {
				return
			}
		}
	}), probes)
	r, err = c.call(ctx, http.MethodPut, "sys/capabilities-self", map[string]any{"paths": paths})
	if err != nil {
		return Scope{}, fmt.Errorf("vault: check scope: %w", err)
	}
	if !r.ok() {
		return Scope{}, fmt.Errorf("vault: check scope: %w", fail("sys/capabilities-self", r, nil))
	}
	var s Scope
	for _, x := range paths {
		has := strs(r.data, x)
		if slices.Contains(has, "root") {
			return Scope{Root: true}, nil
		}
		req, isGranted := granted[x]
		var extra []string
		for _, cp := range has {
			if cp != "deny" && !(isGranted && slices.Contains(req.Capabilities, cp)) {
				extra = append(extra, cp)
			}
		}
		if len(extra) == 0 {
			continue
		}
		where := "outside the inventory's policy"
		if isGranted {
			where = "beyond the policy's " + strings.Join(req.Capabilities, ", ")
		}
		s.Excess = append(s.Excess, fmt.Sprintf("%s: %s (%s)", p.shown(x), strings.Join(extra, ", "), where))
	}

	var params []paramProbe
	for _, req := range reqs {
		for param, values := range req.Params {
			if len(values) == 0 {
				continue // any value is allowed: nothing to probe
			}
			switch param {
			case "accessor":
				params = append(params, paramProbe{path: req.Path, param: param, what: "any token's accessor"})
			case "secret_id_accessor":
				params = append(params, paramProbe{path: req.Path, param: param, what: "any secret-id accessor of the role"})
			case "lease_id":
				// The default policy grants sys/leases/lookup on any lease (read-only);
				// only revocation is held against the token.
				if req.Path == "sys/leases/revoke" {
					params = append(params, paramProbe{path: req.Path, param: param, what: "any lease ID"})
				}
			}
		}
		switch {
		case strings.HasPrefix(req.Path, "identity/entity/name/"):
			// Metadata that is no key=value list fails Vault's field validation before
			// anything is written (or created): 400 past the ACL, 403 when pinned.
			params = append(params, paramProbe{path: req.Path, param: "metadata", what: "any field of the entity, not only disabled", value: 12345})
		case strings.HasSuffix(req.Path, "/secret-id") && req.Params != nil:
			// A num_uses that is no number fails validation before a secret-id is issued.
			params = append(params, paramProbe{path: req.Path, param: "num_uses", what: "secret-id parameters other than metadata", value: "not-a-number"})
		}
	}
	slices.SortFunc(params, func(a, b paramProbe) int { return strings.Compare(a.path, b.path) })
	for _, pp := range params {
		var value any = p.name()
		switch {
		case pp.value != nil:
			value = pp.value
		case pp.param == "lease_id":
			value = "sys/" + p.name() + "/" + p.name() // no mount issues leases under sys/
		}
		r, err := c.call(ctx, http.MethodPut, pp.path, map[string]any{pp.param: value})
		switch {
		case err != nil:
			return Scope{}, fmt.Errorf("vault: check scope: %w", err)
		case r.status == http.StatusForbidden:
			continue
		case r.status == http.StatusServiceUnavailable || r.status == http.StatusBadGateway || r.status == http.StatusGatewayTimeout ||
			r.status == http.StatusTooManyRequests || r.status == http.StatusPreconditionFailed:
			// Answered before the ACL was consulted (sealed, standby, quota): unknown.
			return Scope{}, fmt.Errorf("vault: check scope: %w", fail(pp.path, r, p.shown))
		}
		s.Excess = append(s.Excess, fmt.Sprintf("%s: accepts %s (allowed_parameters do not pin %s: a made-up value answered %d, not 403)",
			pp.path, pp.what, pp.param, r.status))
	}
	return s, nil
}
