package vault

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// TokenAccessor revokes a Vault token (and its child tokens) by accessor:
// auth/token/revoke-accessor. Verified by auth/token/lookup-accessor answering
// "invalid accessor".
type TokenAccessor struct{ c *caller }

var _ actions.Executor = TokenAccessor{}

// lookup answers whether the token still lives, with what it is.
func (e TokenAccessor) lookup(ctx context.Context, t actions.Target) (alive bool, info map[string]any, err error) {
	acc := t.Identity.Accessor
	if acc == "" {
		return false, nil, errNoAccessor(t)
	}
	r, err := e.c.call(ctx, http.MethodPut, "auth/token/lookup-accessor", map[string]any{"accessor": acc})
	switch {
	case err != nil:
		return false, nil, err
	case r.ok():
		return true, r.data, nil
	case r.status == http.StatusBadRequest && (r.has("invalid accessor") || r.has("token not found")):
		return false, nil, nil
	}
	return false, nil, fail("lookup-accessor", r, redactor(t, acc))
}

func errNoAccessor(t actions.Target) error {
	return killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.revoke_token_accessor: %s/%s has no accessor in the inventory", t.Vendor, t.Credential))
}

// Plan implements actions.Executor.
func (e TokenAccessor) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	fp := t.Fingerprint.Of(t.Identity.Accessor)
	alive, info, err := e.lookup(ctx, t)
	if err != nil || !alive {
		return actions.Plan{Summary: "token " + fp + " is already revoked", Targets: []string{"token " + fp}, AlreadyGone: true}, err
	}
	return actions.Plan{
		Summary: fmt.Sprintf("revoke Vault token %s (display name %q, policies %s, %ds left) and every child token",
			fp, str(info, "display_name"), strings.Join(strs(info, "policies"), ","), num(info, "ttl")),
		Targets: []string{"token " + fp},
	}, nil
}

// Apply implements actions.Executor.
func (e TokenAccessor) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	acc := t.Identity.Accessor
	if acc == "" {
		return actions.Outcome{}, errNoAccessor(t)
	}
	r, err := e.c.call(ctx, http.MethodPut, "auth/token/revoke-accessor", map[string]any{"accessor": acc})
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case r.ok() && r.has("No token found"),
		r.status == http.StatusBadRequest && (r.has("invalid accessor") || r.has("token not found")): // the latter when another call revoked it a moment before
		return actions.Outcome{AlreadyDone: true, Detail: "no token has accessor " + t.Fingerprint.Of(acc) + " any more"}, nil
	case r.ok():
		return actions.Outcome{Detail: "revoked token " + t.Fingerprint.Of(acc) + " and its children"}, nil
	}
	return actions.Outcome{}, fail("revoke-accessor", r, redactor(t, acc))
}

// Verify implements actions.Executor.
func (e TokenAccessor) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	alive, _, err := e.lookup(ctx, t)
	if err != nil {
		return actions.Verification{}, err
	}
	fp := t.Fingerprint.Of(t.Identity.Accessor)
	if alive {
		return actions.Verification{Evidence: "auth/token/lookup-accessor still resolves token " + fp}, nil
	}
	return actions.Verification{Dead: true, Evidence: "auth/token/lookup-accessor: invalid accessor " + fp + " (the token no longer exists)"}, nil
}

// SecretID destroys an AppRole secret-id by its accessor, after checking that the
// accessor belongs to the role the inventory names:
// auth/<mount>/role/<role>/secret-id-accessor/destroy. Verified by the lookup under the
// role no longer finding it (a login with the secret-id then fails).
type SecretID struct{ c *caller }

var _ actions.Executor = SecretID{}

func (e SecretID) base(t actions.Target) (string, error) {
	id := t.Identity
	if id.Role == "" || id.SecretIDAccessor == "" || strings.ContainsAny(id.Role, "/*+") {
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.destroy_secret_id: %s/%s needs a role and a secret_id_accessor in the inventory", t.Vendor, t.Credential))
	}
	mount := id.Mount
	if mount == "" {
		mount = "approle"
	}
	return "auth/" + strings.Trim(mount, "/") + "/role/" + id.Role + "/secret-id-accessor/", nil
}

// lookup answers whether the secret-id still lives under the role.
func (e SecretID) lookup(ctx context.Context, t actions.Target) (alive bool, info map[string]any, err error) {
	base, err := e.base(t)
	if err != nil {
		return false, nil, err
	}
	acc := t.Identity.SecretIDAccessor
	r, err := e.c.call(ctx, http.MethodPut, base+"lookup", map[string]any{"secret_id_accessor": acc})
	switch {
	case err != nil:
		return false, nil, err
	case r.status == http.StatusOK && r.data != nil:
		return true, r.data, nil
	case r.status == http.StatusNoContent:
		// Vault answers 204 when the accessor exists but under another role.
		return false, nil, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.destroy_secret_id: secret-id accessor %s does not belong to role %s: refusing to touch it",
			t.Fingerprint.Of(acc), t.Identity.Role))
	case r.has("failed to find accessor entry"):
		return false, nil, nil
	case r.has("does not exist"):
		return false, nil, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.destroy_secret_id: role %s does not exist", t.Identity.Role))
	}
	return false, nil, fail("secret-id-accessor/lookup", r, redactor(t, acc))
}

// Plan implements actions.Executor.
func (e SecretID) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	what := fmt.Sprintf("approle %s secret-id %s", t.Identity.Role, t.Fingerprint.Of(t.Identity.SecretIDAccessor))
	alive, info, err := e.lookup(ctx, t)
	if err != nil || !alive {
		return actions.Plan{Summary: what + " is already destroyed", Targets: []string{what}, AlreadyGone: true}, err
	}
	return actions.Plan{
		Summary: fmt.Sprintf("destroy %s (created %s, uses left %d, 0 is unlimited); tokens it already issued live on and are revoked separately",
			what, str(info, "creation_time"), num(info, "secret_id_num_uses")),
		Targets: []string{what},
	}, nil
}

// Apply implements actions.Executor.
func (e SecretID) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	what := fmt.Sprintf("approle %s secret-id %s", t.Identity.Role, t.Fingerprint.Of(t.Identity.SecretIDAccessor))
	alive, _, err := e.lookup(ctx, t) // checks the role before destroying anything
	if err != nil {
		return actions.Outcome{}, err
	}
	if !alive {
		return actions.Outcome{AlreadyDone: true, Detail: what + " was already destroyed"}, nil
	}
	base, _ := e.base(t)
	acc := t.Identity.SecretIDAccessor
	r, err := e.c.call(ctx, http.MethodPut, base+"destroy", map[string]any{"secret_id_accessor": acc})
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case r.ok():
		return actions.Outcome{Detail: "destroyed " + what}, nil
	case r.has("failed to find accessor entry"):
		return actions.Outcome{AlreadyDone: true, Detail: what + " was already destroyed"}, nil
	}
	return actions.Outcome{}, fail("secret-id-accessor/destroy", r, redactor(t, acc))
}

// Verify implements actions.Executor.
func (e SecretID) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	what := fmt.Sprintf("approle %s secret-id %s", t.Identity.Role, t.Fingerprint.Of(t.Identity.SecretIDAccessor))
	alive, _, err := e.lookup(ctx, t)
	if err != nil {
		return actions.Verification{}, err
	}
	if alive {
		return actions.Verification{Evidence: "secret-id-accessor/lookup still finds " + what}, nil
	}
	return actions.Verification{Dead: true, Evidence: "secret-id-accessor/lookup: no accessor entry for " + what + " (login with it fails)"}, nil
}
