package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// Entity disables a Vault identity entity by name: identity/entity/name/<name> with
// {"disabled": true}. Every token of the entity is then denied (every request, even
// lookup-self), and new logins through the entity's aliases are refused — including
// the tokens Vault cannot list (hashicorp/vault#7367). The tokens are not revoked:
// EnableEntity makes the same tokens work again.
//
// Plan reads the entity (a missing entity is a permanent error: writing to
// identity/entity/name creates entities, so Apply never writes to a name it has not
// just read). Verify reads disabled=true back and, when the credential names a token
// of the entity (Accessor), proves that Vault refuses that token (see Entity.Verify).
// Entity IDs and accessors appear only as fingerprints.
type Entity struct{ c *caller }

var _ actions.Executor = Entity{}

// ErrNoEntity is wrapped (permanent) when the inventory names an identity entity that
// Vault does not have.
var ErrNoEntity = errors.New("no such identity entity")

// entityState is what identity/entity/name/<name> says.
type entityState struct {
	found    bool
	id       string
	disabled bool
	aliases  int
	mounts   []string // the alias mounts, sorted, deduplicated
}

// validName reports whether s can be one path segment (an entity or role name).
func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/*+ ?#%") && s != "." && s != ".."
}

func entityOf(t actions.Target) (string, error) {
	name := t.Identity.Entity
	if !validName(name) {
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.disable_entity: %s/%s needs an exact entity name in the inventory", t.Vendor, t.Credential))
	}
	return name, nil
}

// readEntity reads the entity by name; found is false when there is none.
func (c *caller) readEntity(ctx context.Context, name string) (entityState, error) {
	r, err := c.call(ctx, http.MethodGet, "identity/entity/name/"+name, nil)
	switch {
	case err != nil:
		return entityState{}, err
	case r.status == http.StatusNotFound && len(r.errs) == 0:
		return entityState{}, nil
	case !r.ok():
		return entityState{}, fail("read identity/entity/name/"+name, r, nil)
	}
	st := entityState{found: true, id: str(r.data, "id"), disabled: r.data["disabled"] == true}
	aliases, _ := r.data["aliases"].([]any)
	st.aliases = len(aliases)
	for _, a := range aliases {
		if m, _ := a.(map[string]any); m != nil {
			if p := str(m, "mount_path"); p != "" && !slices.Contains(st.mounts, p) {
				st.mounts = append(st.mounts, p)
			}
		}
	}
	slices.Sort(st.mounts)
	return st, nil
}

// setEntityDisabled writes the disabled flag, and nothing else, on an entity read a moment ago.
func (c *caller) setEntityDisabled(ctx context.Context, name string, disabled bool) error {
	r, err := c.call(ctx, http.MethodPut, "identity/entity/name/"+name, map[string]any{"disabled": disabled})
	switch {
	case err != nil:
		return err
	case !r.ok():
		return fail("update identity/entity/name/"+name, r, nil)
	}
	return nil
}

func errNoEntity(name string) error {
	return killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.disable_entity: %w: %s (the inventory's entity name is wrong, or the entity was deleted)", ErrNoEntity, name))
}

// Plan implements actions.Executor.
func (e Entity) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	name, err := entityOf(t)
	if err != nil {
		return actions.Plan{}, err
	}
	st, err := e.c.readEntity(ctx, name)
	switch {
	case err != nil:
		return actions.Plan{}, err
	case !st.found:
		return actions.Plan{}, errNoEntity(name)
	}
	what := "entity " + name
	if st.disabled {
		return actions.Plan{Summary: what + " is already disabled", Targets: []string{what}, AlreadyGone: true}, nil
	}
	mounts := "none"
	if len(st.mounts) > 0 {
		mounts = strings.Join(st.mounts, ", ")
	}
	return actions.Plan{
		Summary: fmt.Sprintf("disable identity entity %s (%s, %d alias(es) on %s): every token of the entity is denied and new logins through its aliases are refused; the tokens are not revoked, and restore re-enables them",
			name, t.Fingerprint.Of(st.id), st.aliases, mounts),
		Targets: []string{what},
	}, nil
}

// Apply implements actions.Executor.
func (e Entity) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	name, err := entityOf(t)
	if err != nil {
		return actions.Outcome{}, err
	}
	st, err := e.c.readEntity(ctx, name) // never write to a name that does not exist: it would create an entity
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case !st.found:
		return actions.Outcome{}, errNoEntity(name)
	case st.disabled:
		return actions.Outcome{AlreadyDone: true, Detail: "entity " + name + " was already disabled"}, nil
	}
	if err := e.c.setEntityDisabled(ctx, name, true); err != nil {
		return actions.Outcome{}, err
	}
	return actions.Outcome{Detail: fmt.Sprintf("disabled entity %s (%s): its tokens are denied, not revoked", name, t.Fingerprint.Of(st.id))}, nil
}

// Verify implements actions.Executor. It reads the entity back: disabled=true is the
// state in which Vault's token store refuses every token of the entity. When the
// credential names a token of the entity (Accessor), it also proves the refusal
// without holding that token: auth/token/lookup-accessor still finds the token (so it
// was not revoked, and it belongs to this entity), while sys/capabilities-accessor —
// which resolves the token the way Vault resolves a request's token — answers
// "invalid token". A token that no longer exists (revoked or expired) proves nothing
// either way; the evidence then says so and rests on the read-back.
func (e Entity) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	name, err := entityOf(t)
	if err != nil {
		return actions.Verification{}, err
	}
	st, err := e.c.readEntity(ctx, name)
	switch {
	case err != nil:
		return actions.Verification{}, err
	case !st.found:
		return actions.Verification{}, errNoEntity(name)
	case !st.disabled:
		return actions.Verification{Evidence: "identity/entity/name/" + name + " reads disabled=false"}, nil
	}
	ev := "identity/entity/name/" + name + " reads disabled=true"
	if t.Identity.Accessor == "" {
		return actions.Verification{Dead: true, Evidence: ev + " (no token of the entity in the inventory to prove the refusal with)"}, nil
	}
	p, err := e.c.tokenProof(ctx, t.Fingerprint, st.id, t.Identity.Accessor)
	if err != nil {
		return actions.Verification{}, err
	}
	if p.state == tokenWorks {
		return actions.Verification{Evidence: ev + ", but " + p.evidence}, nil
	}
	return actions.Verification{Dead: true, Evidence: ev + "; " + p.evidence}, nil
}

// tokenState is what Vault says of a token, asked by accessor.
type tokenState int

const (
	tokenGone        tokenState = iota // no token has the accessor (revoked or expired)
	tokenOtherEntity                   // the token exists but is not of the entity
	tokenDenied                        // the token exists and Vault refuses to resolve it
	tokenWorks                         // the token exists and Vault resolves it
)

type proof struct {
	state    tokenState
	evidence string
}

// tokenProof finds out, without holding the token, whether Vault accepts the token
// with accessor acc of the entity entityID: lookup-accessor says whether the token
// exists and which entity it is of; sys/capabilities-accessor resolves it as a request
// would be (the token store's lookup, which refuses tokens of a disabled entity) and
// answers "invalid token" for a refused one.
func (c *caller) tokenProof(ctx context.Context, fp actions.Fingerprinter, entityID, acc string) (proof, error) {
	tok := "token " + fp.Of(acc)
	redact := func(s string) string { return strings.ReplaceAll(s, acc, fp.Of(acc)) }
	r, err := c.call(ctx, http.MethodPut, "auth/token/lookup-accessor", map[string]any{"accessor": acc})
	switch {
	case err != nil:
		return proof{}, err
	case r.status == http.StatusBadRequest && (r.has("invalid accessor") || r.has("token not found")):
		return proof{tokenGone, tok + " no longer exists (revoked or expired), so it proves nothing"}, nil
	case !r.ok():
		return proof{}, fail("lookup-accessor", r, redact)
	}
	if got := str(r.data, "entity_id"); got != entityID {
		return proof{tokenOtherEntity, fmt.Sprintf("%s is not a token of the entity (its entity is %s), so it proves nothing: fix the inventory", tok, fp.Of(got))}, nil
	}
	r, err = c.call(ctx, http.MethodPut, "sys/capabilities-accessor", map[string]any{"accessor": acc, "paths": []string{"auth/token/lookup-self"}})
	switch {
	case err != nil:
		return proof{}, err
	case r.status == http.StatusBadRequest && r.has("invalid token"):
		return proof{tokenDenied, tok + " of the entity still exists (lookup-accessor) and sys/capabilities-accessor answers \"invalid token\": Vault refuses it"}, nil
	case r.status == http.StatusBadRequest && r.has("invalid accessor"):
		return proof{tokenGone, tok + " disappeared while it was checked (revoked or expired), so it proves nothing"}, nil
	case r.ok():
		return proof{tokenWorks, fmt.Sprintf("sys/capabilities-accessor resolves %s of the entity (%v on auth/token/lookup-self): Vault accepts it",
			tok, strs(r.data, "capabilities"))}, nil
	}
	return proof{}, fail("sys/capabilities-accessor", r, redact)
}
