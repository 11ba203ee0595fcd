package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// The restore primitives of `killswitch restore INCIDENT`: after a false positive they
// take back what can be taken back (EnableEntity, RestorePolicy) and issue again, wrapped
// for the vendor to pick up once, what cannot (ReissueSecretID, ReissueKV). Revoked
// tokens and leases stay dead: Vault cannot bring them back.
//
// Each primitive is idempotent (a second call for the same incident reports AlreadyDone
// and changes nothing, or hands the same KV version over again) and verifies its own
// result; the Step it returns says what was checked.

// Step is what one restore primitive did and the proof of it. It holds no secret in
// clear except Handover.Token (and Handover.Accessor), which are never marshalled: a
// Step can go to the ledger or a log as it is.
type Step struct {
	// What names the step, e.g. "enable entity mailer".
	What string `json:"what"`
	// AlreadyDone reports that an earlier call (for the same incident) had done it.
	AlreadyDone bool `json:"already_done"`
	// Verified reports that the check after the step found it done.
	Verified bool `json:"verified"`
	// Evidence says what was checked and what Vault answered (fingerprints only).
	Evidence string `json:"evidence"`
	// Version is the KV version written (ReissueKV).
	Version int `json:"version,omitempty"`
	// Handover is the response-wrapped delivery for the vendor (ReissueSecretID,
	// ReissueKV), nil otherwise.
	Handover *Handover `json:"handover,omitempty"`
}

// Handover is a response-wrapped secret waiting for the vendor: the vendor unwraps
// Token once (`vault unwrap TOKEN`, or sys/wrapping/unwrap with it as the Vault
// token) before Expires. Token is the only secret Killswitch hands out: give it to the
// vendor over a separate channel, keep it out of logs, the ledger and incident
// records (it is not marshalled, and String redacts it).
type Handover struct {
	// Token is the single-use wrapping token. Never marshalled.
	Token string `json:"-"`
	// Accessor is the wrapping token's accessor (to revoke a handover that was never
	// picked up: auth/token/revoke-accessor). Never marshalled.
	Accessor string `json:"-"`
	// AccessorFP is the accessor's fingerprint, for records.
	AccessorFP string `json:"accessor_fp"`
	// TTL is how long the wrapping token lives.
	TTL time.Duration `json:"ttl"`
	// Created and Expires are Vault's creation time of the wrapping token and its end.
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// CreationPath is the Vault path whose answer is wrapped.
	CreationPath string `json:"creation_path"`
}

// String renders the handover without its token or accessor.
func (h Handover) String() string {
	return fmt.Sprintf("wrapped %s, wrapping token %s, expires %s", h.CreationPath, h.AccessorFP, h.Expires.Format(time.RFC3339))
}

// DefaultWrapTTL is the wrapping TTL used when a restore primitive is given none.
const DefaultWrapTTL = 24 * time.Hour

// RestoreMarker is the metadata key (secret-id metadata) and custom-metadata key (KV)
// a restore leaves, holding the incident, so that a second call finds its own work.
const RestoreMarker = "killswitch_restore"

// RestoredKey is the KV custom-metadata key ReissueKV sets to <incident>@<version>.
const RestoredKey = RestoreMarker

// ErrNoRole is wrapped (permanent) when an AppRole role does not exist.
var ErrNoRole = errors.New("no such AppRole role")

// ErrNotRestored is wrapped by a restore step whose check afterwards fails (retryable:
// Vault may not show the write yet on a standby).
var ErrNotRestored = errors.New("the restore step did not verify")

func notRestored(what, evidence string) error {
	return killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("%w: %s: %s", ErrNotRestored, what, evidence))
}

// EnableEntity re-enables the identity entity name (disabled=false), so that its
// tokens that were denied, not revoked, work again and its aliases can log in again.
// Verified by reading disabled=false back and, when accessor names a token of the
// entity, by sys/capabilities-accessor resolving that token again (the proof
// Entity.Verify uses, the other way round). A missing entity is a permanent error
// (ErrNoEntity): nothing is created.
func EnableEntity(ctx context.Context, client *api.Client, fp actions.Fingerprinter, name, accessor string) (Step, error) {
	c := &caller{c: client}
	step := Step{What: "enable entity " + name}
	if !validName(name) {
		return step, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("enable entity: %q is not an entity name", name))
	}
	st, err := c.readEntity(ctx, name)
	switch {
	case err != nil:
		return step, err
	case !st.found:
		return step, errNoEntity(name)
	case !st.disabled:
		step.AlreadyDone = true
	default:
		if err := c.setEntityDisabled(ctx, name, false); err != nil {
			return step, err
		}
	}
	if st, err = c.readEntity(ctx, name); err != nil {
		return step, err
	}
	if !st.found || st.disabled {
		return step, notRestored(step.What, "identity/entity/name/"+name+" does not read disabled=false")
	}
	step.Evidence = "identity/entity/name/" + name + " reads disabled=false"
	if accessor != "" {
		p, err := c.tokenProof(ctx, fp, st.id, accessor)
		if err != nil {
			return step, err
		}
		if p.state == tokenDenied {
			return step, notRestored(step.What, p.evidence)
		}
		step.Evidence += "; " + p.evidence
	}
	step.Verified = true
	return step, nil
}

// RestorePolicy puts back the policy that Quarantine replaced (Restore) and verifies
// that the policy no longer reads as quarantined. A policy that is not quarantined is
// AlreadyDone.
func RestorePolicy(ctx context.Context, client *api.Client, name string) (Step, error) {
	step := Step{What: "restore policy " + name}
	err := Restore(ctx, client, name)
	switch {
	case errors.Is(err, ErrNotQuarantined):
		step.AlreadyDone = true
	case err != nil:
		return step, err
	}
	text, found, err := (&caller{c: client}).readPolicy(ctx, name)
	switch {
	case err != nil:
		return step, err
	case !found:
		return step, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("restore policy %s: it does not exist", name))
	}
	if _, q := original(text); q {
		return step, notRestored(step.What, "sys/policies/acl/"+name+" still reads quarantined")
	}
	step.Verified = true
	step.Evidence = fmt.Sprintf("sys/policies/acl/%s reads the original (%d path rules)", name, strings.Count(text, "path "))
	return step, nil
}

// wrapInfo is Vault's wrap_info.
type wrapInfo struct {
	Token           string    `json:"token"`
	Accessor        string    `json:"accessor"`
	TTL             int       `json:"ttl"`
	CreationTime    time.Time `json:"creation_time"`
	CreationPath    string    `json:"creation_path"`
	WrappedAccessor string    `json:"wrapped_accessor"`
}

func (w wrapInfo) handover(fp actions.Fingerprinter) *Handover {
	ttl := time.Duration(w.TTL) * time.Second
	return &Handover{Token: w.Token, Accessor: w.Accessor, AccessorFP: fp.Of(w.Accessor), TTL: ttl,
		Created: w.CreationTime, Expires: w.CreationTime.Add(ttl), CreationPath: w.CreationPath}
}

// callWrapped makes a PUT whose answer Vault wraps for ttl (X-Vault-Wrap-TTL): the
// caller gets only the wrapping token, never the answer.
func (c *caller) callWrapped(ctx context.Context, path string, body any, ttl time.Duration) (wrapInfo, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return wrapInfo{}, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("vault PUT %s: %w", path, err))
	}
	req := c.c.NewRequest(http.MethodPut, "/v1/"+path)
	req.BodyBytes = b
	req.WrapTTL = strconv.Itoa(int(ttl.Seconds())) + "s"
	resp, err := c.c.RawRequestWithContext(ctx, req) //nolint:staticcheck // see caller.call
	if resp == nil {
		if err == nil {
			err = errors.New("no response")
		}
		return wrapInfo{}, unreachable(fmt.Errorf("vault PUT %s: %w", path, err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return wrapInfo{}, unreachable(fmt.Errorf("vault PUT %s: read answer: %w", path, err))
	}
	var doc struct {
		WrapInfo *wrapInfo `json:"wrap_info"`
		Errors   []string  `json:"errors"`
	}
	_ = json.Unmarshal(raw, &doc)
	if resp.StatusCode >= 300 {
		return wrapInfo{}, fail("PUT "+path, &reply{status: resp.StatusCode, errs: doc.Errors}, nil)
	}
	if doc.WrapInfo == nil || doc.WrapInfo.Token == "" {
		return wrapInfo{}, killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("vault PUT %s: the answer is not wrapped", path))
	}
	return *doc.WrapInfo, nil
}

// checkWrapping verifies a wrapping token with sys/wrapping/lookup: it exists, was made
// by creationPath and is not yet unwrapped.
func (c *caller) checkWrapping(ctx context.Context, fp actions.Fingerprinter, w wrapInfo, creationPath string) (string, error) {
	r, err := c.call(ctx, http.MethodPut, "sys/wrapping/lookup", map[string]any{"token": w.Token})
	switch {
	case err != nil:
		return "", err
	case !r.ok():
		return "", fail("sys/wrapping/lookup", r, func(s string) string { return strings.ReplaceAll(s, w.Token, "<wrapping token>") })
	}
	if got := str(r.data, "creation_path"); got != creationPath {
		return "", notRestored("wrap "+creationPath, "sys/wrapping/lookup says the wrapping token wraps "+got)
	}
	return fmt.Sprintf("sys/wrapping/lookup: wrapping token %s wraps %s for %ds", fp.Of(w.Accessor), creationPath, num(r.data, "creation_ttl")), nil
}

func approleRoleBase(ref killswitch.AppRoleRef) (string, error) {
	if !validName(ref.Role) {
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("approle role %q is not a role name", ref.Role))
	}
	return strings.TrimSuffix(approleBase(ref.Mount, ref.Role), "secret-id-accessor/"), nil
}

// listSecretIDs lists the secret-id accessors of a role; found is false when the
// role does not exist.
func (c *caller) listSecretIDs(ctx context.Context, base string) (accessors []string, found bool, err error) {
	r, err := c.call(ctx, "LIST", base+"secret-id", nil)
	switch {
	case err != nil:
		return nil, false, err
	case r.status == http.StatusNotFound && len(r.errs) == 0: // no secret-id
		return nil, true, nil
	case r.status == http.StatusBadRequest && r.has("does not exist"):
		return nil, false, nil
	case !r.ok():
		return nil, false, fail("LIST "+base+"secret-id", r, nil)
	}
	return strs(r.data, "keys"), true, nil
}

// lookupSecretID looks a secret-id up by accessor under a role: nil when it is gone.
func (c *caller) lookupSecretID(ctx context.Context, fp actions.Fingerprinter, base, acc string) (map[string]any, error) {
	r, err := c.call(ctx, http.MethodPut, base+"secret-id-accessor/lookup", map[string]any{"secret_id_accessor": acc})
	switch {
	case err != nil:
		return nil, err
	case r.status == http.StatusOK && r.data != nil:
		return r.data, nil
	case r.status == http.StatusNoContent, r.has("failed to find accessor entry"), r.has("invalid secret id accessor"):
		return nil, nil
	}
	return nil, fail(base+"secret-id-accessor/lookup", r, func(s string) string { return strings.ReplaceAll(s, acc, fp.Of(acc)) })
}

// ReissueSecretID issues a new secret-id on the vendor's AppRole role, response-wrapped
// for ttl (DefaultWrapTTL when 0): Killswitch never sees the secret-id, only the
// wrapping token it hands to the vendor (Step.Handover). The secret-id carries the
// metadata killswitch_restore=<incident>, which makes the call idempotent: when a live
// secret-id of the role already carries it, nothing is issued and the Step is
// AlreadyDone without a Handover (that wrapping token cannot be had again; destroy
// that secret-id to issue another). Verified by sys/wrapping/lookup (the wrapping
// token exists, unused, and wraps this role's secret-id endpoint) and by the new
// secret-id's accessor (Vault's wrapped_accessor) being found under the role.
func ReissueSecretID(ctx context.Context, client *api.Client, fp actions.Fingerprinter, ref killswitch.AppRoleRef, incident string, ttl time.Duration) (Step, error) {
	c := &caller{c: client}
	step := Step{What: "issue a new secret-id of approle role " + ref.Role}
	base, err := approleRoleBase(ref)
	if err != nil {
		return step, err
	}
	if incident == "" {
		return step, killswitch.Permanent(killswitch.ReasonInternal, errors.New("reissue secret-id: no incident"))
	}
	if ttl <= 0 {
		ttl = DefaultWrapTTL
	}
	accs, found, err := c.listSecretIDs(ctx, base)
	switch {
	case err != nil:
		return step, err
	case !found:
		return step, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("reissue secret-id: %w: %s", ErrNoRole, ref.Role))
	}
	for _, acc := range accs {
		info, err := c.lookupSecretID(ctx, fp, base, acc)
		if err != nil {
			return step, err
		}
		if md, _ := info["metadata"].(map[string]any); md != nil && str(md, RestoreMarker) == incident {
			step.AlreadyDone, step.Verified = true, true
			step.Evidence = fmt.Sprintf("secret-id %s of role %s, issued for incident %s, is live (its wrapping token was handed over before)", fp.Of(acc), ref.Role, incident)
			return step, nil
		}
	}
	md, _ := json.Marshal(map[string]string{RestoreMarker: incident})
	w, err := c.callWrapped(ctx, base+"secret-id", map[string]any{"metadata": string(md)}, ttl)
	if err != nil {
		return step, err
	}
	step.Handover = w.handover(fp)
	ev, err := c.checkWrapping(ctx, fp, w, base+"secret-id")
	if err != nil {
		return step, err
	}
	if w.WrappedAccessor != "" {
		info, err := c.lookupSecretID(ctx, fp, base, w.WrappedAccessor)
		if err != nil {
			return step, err
		}
		if info == nil {
			return step, notRestored(step.What, "the new secret-id "+fp.Of(w.WrappedAccessor)+" is not found under the role")
		}
		ev += "; secret-id-accessor/lookup finds the new secret-id " + fp.Of(w.WrappedAccessor) + " under role " + ref.Role
	}
	step.Verified, step.Evidence = true, ev
	return step, nil
}

// ReissueKV writes a new version of the vendor's KV v2 secret with a fresh random
// value for every key of the current version (the shape KV's rotation writes) and
// hands that value over response-wrapped for ttl (sys/wrapping/wrap; DefaultWrapTTL
// when 0): the wrapped document is the secret's data, key → value. The secret's custom
// metadata gets killswitch_restore=<incident>@<version>; a second call for the same
// incident, while that version is still current, writes nothing and wraps that version
// again (AlreadyDone, with a new Handover). Verified by reading the current version
// back (it must be the one written and equal to the wrapped value) and by
// sys/wrapping/lookup. Killswitch sees the new value in clear (it makes it); it
// returns it only inside the wrapping.
func ReissueKV(ctx context.Context, client *api.Client, fp actions.Fingerprinter, ref killswitch.KVRef, incident string, ttl time.Duration) (Step, error) {
	c := &caller{c: client}
	mount, path, err := kvPaths(actions.Target{Identity: killswitch.Credential{Mount: ref.Mount, Path: ref.Path}})
	step := Step{What: "issue a new version of " + mount + "/" + path}
	if err != nil {
		return step, err
	}
	if incident == "" {
		return step, killswitch.Permanent(killswitch.ReasonInternal, errors.New("reissue kv: no incident"))
	}
	if ttl <= 0 {
		ttl = DefaultWrapTTL
	}
	st, err := c.kvMeta(ctx, mount, path)
	switch {
	case err != nil:
		return step, err
	case !st.exists:
		return step, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("reissue kv: nothing is stored at %s/%s", mount, path))
	}
	readCurrent := func() (map[string]any, int, error) {
		r, err := c.call(ctx, http.MethodGet, mount+"/data/"+path, nil)
		switch {
		case err != nil:
			return nil, 0, err
		case r.status == http.StatusNotFound: // the current version is deleted or destroyed
			return nil, 0, nil
		case !r.ok():
			return nil, 0, fail("kv read", r, nil)
		}
		data, _ := r.data["data"].(map[string]any)
		meta, _ := r.data["metadata"].(map[string]any)
		return data, int(num(meta, "version")), nil
	}
	var value map[string]any
	version := st.current
	if st.restored == incident+"@"+strconv.Itoa(st.current) {
		step.AlreadyDone = true
		if value, _, err = readCurrent(); err != nil {
			return step, err
		}
		if len(value) == 0 {
			return step, killswitch.Permanent(killswitch.ReasonConflict, fmt.Errorf("reissue kv: version %d of %s/%s was issued for this incident and is no longer readable", st.current, mount, path))
		}
	} else {
		cur, _, err := readCurrent()
		if err != nil {
			return step, err
		}
		if value, err = freshValues(cur); err != nil {
			return step, err
		}
		r, err := c.call(ctx, http.MethodPut, mount+"/data/"+path, map[string]any{"options": map[string]any{"cas": st.current}, "data": value})
		switch {
		case err != nil:
			return step, err
		case r.has("check-and-set"):
			return step, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("reissue kv: %s/%s changed while writing: %s", mount, path, r.message()))
		case !r.ok():
			return step, fail("kv write", r, nil)
		}
		version = int(num(r.data, "version"))
		r, err = c.call(ctx, http.MethodPatch, mount+"/metadata/"+path, map[string]any{"custom_metadata": map[string]any{RestoredKey: incident + "@" + strconv.Itoa(version)}})
		if err != nil {
			return step, err
		}
		if !r.ok() {
			return step, fail("kv metadata patch", r, nil)
		}
	}
	step.Version = version
	w, err := c.callWrapped(ctx, "sys/wrapping/wrap", value, ttl)
	if err != nil {
		return step, err
	}
	step.Handover = w.handover(fp)
	back, v, err := readCurrent()
	if err != nil {
		return step, err
	}
	if v != version || !reflect.DeepEqual(back, value) {
		return step, notRestored(step.What, fmt.Sprintf("the current version of %s/%s is %d, not the wrapped version %d", mount, path, v, version))
	}
	ev, err := c.checkWrapping(ctx, fp, w, "sys/wrapping/wrap")
	if err != nil {
		return step, err
	}
	step.Verified = true
	step.Evidence = fmt.Sprintf("%s/%s: version %d is current and reads back as the wrapped value (%d key(s)); %s", mount, path, version, len(value), ev)
	return step, nil
}
