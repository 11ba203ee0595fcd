package vault

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// Lease revokes one exact lease, synchronously: sys/leases/revoke with sync=true (the
// backend has revoked the credential when Vault answers). Verified by sys/leases/lookup
// answering "invalid lease".
type Lease struct{ c *caller }

var _ actions.Executor = Lease{}

func (e Lease) lookup(ctx context.Context, t actions.Target) (alive bool, info map[string]any, err error) {
	id := t.Identity.LeaseID
	if id == "" || strings.ContainsAny(id, "*+") {
		return false, nil, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.revoke_lease: %s/%s needs an exact lease_id in the inventory", t.Vendor, t.Credential))
	}
	r, err := e.c.call(ctx, http.MethodPut, "sys/leases/lookup", map[string]any{"lease_id": id})
	switch {
	case err != nil:
		return false, nil, err
	case r.ok():
		return true, r.data, nil
	case r.status == http.StatusBadRequest && r.has("invalid lease"):
		return false, nil, nil
	}
	return false, nil, fail("sys/leases/lookup", r, redactor(t, id))
}

// leaseFP renders a lease ID for plans, outcomes and errors: "lease " and its
// fingerprint, never the ID in clear.
func leaseFP(t actions.Target) string { return "lease " + t.Fingerprint.Of(t.Identity.LeaseID) }

// Plan implements actions.Executor.
func (e Lease) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	what := leaseFP(t)
	alive, info, err := e.lookup(ctx, t)
	if err != nil || !alive {
		return actions.Plan{Summary: what + " is already revoked", Targets: []string{what}, AlreadyGone: true}, err
	}
	return actions.Plan{
		Summary: fmt.Sprintf("revoke %s synchronously (expires %s, %ds left)", what, str(info, "expire_time"), num(info, "ttl")),
		Targets: []string{what},
	}, nil
}

// Apply implements actions.Executor.
func (e Lease) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	id := t.Identity.LeaseID
	alive, _, err := e.lookup(ctx, t) // Vault answers 204 to revoking what does not exist
	if err != nil {
		return actions.Outcome{}, err
	}
	if !alive {
		return actions.Outcome{AlreadyDone: true, Detail: leaseFP(t) + " was already revoked"}, nil
	}
	r, err := e.c.call(ctx, http.MethodPut, "sys/leases/revoke", map[string]any{"lease_id": id, "sync": true})
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case r.ok():
		return actions.Outcome{Detail: "revoked " + leaseFP(t) + " (sync)"}, nil
	}
	return actions.Outcome{}, fail("sys/leases/revoke", r, redactor(t, id))
}

// Verify implements actions.Executor.
func (e Lease) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	alive, _, err := e.lookup(ctx, t)
	if err != nil {
		return actions.Verification{}, err
	}
	if alive {
		return actions.Verification{Evidence: "sys/leases/lookup still finds " + leaseFP(t)}, nil
	}
	return actions.Verification{Dead: true, Evidence: "sys/leases/lookup: invalid " + leaseFP(t)}, nil
}

// LeasePrefix revokes every lease under a prefix such as database/creds/<role>,
// synchronously: sys/leases/revoke-prefix/<prefix> with sync=true. The prefix must
// name at least a mount and a path below it (a whole mount is refused). Verified by
// listing sys/leases/lookup/<prefix>/ and finding nothing.
type LeasePrefix struct{ c *caller }

var _ actions.Executor = LeasePrefix{}

// maxListed bounds the leases named one by one in a plan.
const maxListed = 50

func prefixOf(t actions.Target) (string, error) {
	p := strings.Trim(t.Identity.LeasePrefix, "/")
	segs := strings.Split(p, "/")
	if p == "" || len(segs) < 2 || strings.ContainsAny(p, "*+ ") || strings.Contains(p, "..") {
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.revoke_lease_prefix: %s/%s: lease_prefix %q must name a mount and a path below it (e.g. database/creds/<role>), no wildcards",
			t.Vendor, t.Credential, t.Identity.LeasePrefix))
	}
	return p, nil
}

// list returns the leases (and sub-prefixes, ending in /) directly under the prefix.
func (e LeasePrefix) list(ctx context.Context, t actions.Target) (string, []string, error) {
	p, err := prefixOf(t)
	if err != nil {
		return "", nil, err
	}
	r, err := e.c.call(ctx, "LIST", "sys/leases/lookup/"+p+"/", nil)
	switch {
	case err != nil:
		return p, nil, err
	case r.status == http.StatusNotFound:
		return p, nil, nil
	case r.ok():
		keys := strs(r.data, "keys")
		sort.Strings(keys)
		return p, keys, nil
	}
	return p, nil, fail("LIST sys/leases/lookup", r, nil)
}

// Plan implements actions.Executor.
func (e LeasePrefix) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	p, keys, err := e.list(ctx, t)
	if err != nil {
		return actions.Plan{}, err
	}
	if len(keys) == 0 {
		return actions.Plan{Summary: "no lease is left under " + p, Targets: []string{p + "/"}, AlreadyGone: true}, nil
	}
	targets := make([]string, 0, min(len(keys), maxListed)+1)
	for i, k := range keys {
		if i == maxListed {
			targets = append(targets, fmt.Sprintf("… and %d more", len(keys)-maxListed))
			break
		}
		if strings.HasSuffix(k, "/") { // a sub-prefix: a path, not a lease
			targets = append(targets, p+"/"+k)
			continue
		}
		targets = append(targets, "lease "+t.Fingerprint.Of(p+"/"+k))
	}
	return actions.Plan{Summary: fmt.Sprintf("revoke the %d lease(s) under %s synchronously", len(keys), p), Targets: targets}, nil
}

// Apply implements actions.Executor.
func (e LeasePrefix) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	p, keys, err := e.list(ctx, t)
	if err != nil {
		return actions.Outcome{}, err
	}
	if len(keys) == 0 {
		return actions.Outcome{AlreadyDone: true, Detail: "no lease was left under " + p}, nil
	}
	r, err := e.c.call(ctx, http.MethodPut, "sys/leases/revoke-prefix/"+p, map[string]any{"sync": true})
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case r.ok():
		return actions.Outcome{Detail: fmt.Sprintf("revoked %d lease(s) under %s (sync)", len(keys), p)}, nil
	}
	return actions.Outcome{}, fail("sys/leases/revoke-prefix", r, nil)
}

// Verify implements actions.Executor.
func (e LeasePrefix) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	p, keys, err := e.list(ctx, t)
	if err != nil {
		return actions.Verification{}, err
	}
	if len(keys) > 0 {
		return actions.Verification{Evidence: fmt.Sprintf("sys/leases/lookup still lists %d lease(s) under %s", len(keys), p)}, nil
	}
	return actions.Verification{Dead: true, Evidence: "sys/leases/lookup lists no lease under " + p + " (the backend revoked them synchronously)"}, nil
}
