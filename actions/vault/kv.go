package vault

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// KV rotates a static secret in a KV v2 mount: it writes a new version in which every
// key holds a fresh random value (check-and-set on the version it read), marks the
// secret's custom metadata with killswitch_rotated=<incident>@<version>, and destroys
// every older version (destroy, not delete: the data is gone for good). Verified by the
// metadata: the current version is the kill switch's and every older one is destroyed.
//
// The marker makes Apply idempotent: a retry for the same incident does not rotate a
// second time. A crash between the write and the marker makes the retry rotate once
// more, which is harmless.
type KV struct{ c *caller }

var _ actions.Executor = KV{}

// MarkerKey is the custom-metadata key a rotation leaves on the secret.
const MarkerKey = "killswitch_rotated"

// kvState is what the metadata says.
type kvState struct {
	exists  bool
	current int
	live    []int // versions not destroyed, ascending
	marker  string
	// restored is the RestoredKey marker (ReissueKV).
	restored string
}

func kvPaths(t actions.Target) (mount, path string, err error) {
	mount, path = strings.Trim(t.Identity.Mount, "/"), strings.Trim(t.Identity.Path, "/")
	if mount == "" {
		mount = "secret"
	}
	if path == "" || strings.ContainsAny(path, "*+") || strings.Contains(path, "..") {
		return "", "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.rotate_kv: %s/%s needs an exact path in the inventory", t.Vendor, t.Credential))
	}
	return mount, path, nil
}

func (e KV) state(ctx context.Context, t actions.Target) (kvState, error) {
	mount, path, err := kvPaths(t)
	if err != nil {
		return kvState{}, err
	}
	return e.c.kvMeta(ctx, mount, path)
}

// kvMeta reads the metadata of mount/path.
func (c *caller) kvMeta(ctx context.Context, mount, path string) (kvState, error) {
	r, err := c.call(ctx, http.MethodGet, mount+"/metadata/"+path, nil)
	switch {
	case err != nil:
		return kvState{}, err
	case r.status == http.StatusNotFound && len(r.errs) == 0:
		return kvState{}, nil
	case !r.ok():
		return kvState{}, fail("kv metadata", r, nil)
	}
	st := kvState{exists: true, current: int(num(r.data, "current_version"))}
	versions, _ := r.data["versions"].(map[string]any)
	for k, v := range versions {
		n, err := strconv.Atoi(k)
		if err != nil {
			continue
		}
		if m, _ := v.(map[string]any); m != nil && m["destroyed"] != true {
			st.live = append(st.live, n)
		}
	}
	slices.Sort(st.live)
	if cm, _ := r.data["custom_metadata"].(map[string]any); cm != nil {
		st.marker = str(cm, MarkerKey)
		st.restored = str(cm, RestoredKey)
	}
	return st, nil
}

func marker(t actions.Target, version int) string {
	return t.Incident + "@" + strconv.Itoa(version)
}

// older returns the live versions before v.
func (s kvState) older(v int) []int {
	var out []int
	for _, n := range s.live {
		if n < v {
			out = append(out, n)
		}
	}
	return out
}

// Plan implements actions.Executor.
func (e KV) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	mount, path, err := kvPaths(t)
	if err != nil {
		return actions.Plan{}, err
	}
	st, err := e.state(ctx, t)
	if err != nil {
		return actions.Plan{}, err
	}
	where := mount + "/" + path
	switch {
	case !st.exists:
		return actions.Plan{Summary: "nothing is stored at " + where, Targets: []string{where}, AlreadyGone: true}, nil
	case st.marker == marker(t, st.current) && len(st.older(st.current)) == 0:
		return actions.Plan{Summary: where + " was already rotated for this incident", Targets: []string{where}, AlreadyGone: true}, nil
	}
	return actions.Plan{
		Summary: fmt.Sprintf("write version %d of %s with fresh random values and destroy versions %v", st.current+1, where, st.live),
		Targets: []string{fmt.Sprintf("%s versions %v", where, st.live)},
	}, nil
}

// Apply implements actions.Executor.
func (e KV) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	mount, path, err := kvPaths(t)
	if err != nil {
		return actions.Outcome{}, err
	}
	where := mount + "/" + path
	st, err := e.state(ctx, t)
	if err != nil {
		return actions.Outcome{}, err
	}
	if !st.exists {
		return actions.Outcome{AlreadyDone: true, Detail: "nothing is stored at " + where}, nil
	}
	version, rotated := st.current, false
	if st.marker != marker(t, st.current) {
		if version, err = e.rotate(ctx, t, mount, path, st.current); err != nil {
			return actions.Outcome{}, err
		}
		rotated = true
	}
	old := st.older(version)
	if len(old) > 0 {
		r, err := e.c.call(ctx, http.MethodPut, mount+"/destroy/"+path, map[string]any{"versions": old})
		if err != nil {
			return actions.Outcome{}, err
		}
		if !r.ok() {
			return actions.Outcome{}, fail("kv destroy", r, nil)
		}
	}
	if !rotated && len(old) == 0 {
		return actions.Outcome{AlreadyDone: true, Detail: where + " was already rotated for this incident"}, nil
	}
	return actions.Outcome{Detail: fmt.Sprintf("wrote version %d of %s, destroyed versions %v", version, where, old)}, nil
}

// rotate writes the new version (check-and-set on current) and marks it.
func (e KV) rotate(ctx context.Context, t actions.Target, mount, path string, current int) (int, error) {
	r, err := e.c.call(ctx, http.MethodGet, mount+"/data/"+path, nil) // the current version
	if err != nil {
		return 0, err
	}
	if !r.ok() && r.status != http.StatusNotFound { // 404: the current version is deleted
		return 0, fail("kv read", r, nil)
	}
	data, _ := r.data["data"].(map[string]any)
	fresh, err := freshValues(data)
	if err != nil {
		return 0, err
	}
	r, err = e.c.call(ctx, http.MethodPut, mount+"/data/"+path, map[string]any{"options": map[string]any{"cas": current}, "data": fresh})
	switch {
	case err != nil:
		return 0, err
	case r.has("check-and-set"):
		return 0, killswitch.Retryable(killswitch.ReasonConflict, fmt.Errorf("vault.rotate_kv: %s/%s changed while rotating: %s", mount, path, r.message()))
	case !r.ok():
		return 0, fail("kv write", r, nil)
	}
	version := int(num(r.data, "version"))
	r, err = e.c.call(ctx, http.MethodPatch, mount+"/metadata/"+path, map[string]any{"custom_metadata": map[string]any{MarkerKey: marker(t, version)}})
	if err != nil {
		return 0, err
	}
	if !r.ok() {
		return 0, fail("kv metadata patch", r, nil)
	}
	return version, nil
}

// Verify implements actions.Executor.
func (e KV) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	mount, path, err := kvPaths(t)
	if err != nil {
		return actions.Verification{}, err
	}
	where := mount + "/" + path
	st, err := e.state(ctx, t)
	switch {
	case err != nil:
		return actions.Verification{}, err
	case !st.exists:
		return actions.Verification{Dead: true, Evidence: "nothing is stored at " + where}, nil
	case st.marker != marker(t, st.current):
		return actions.Verification{Evidence: fmt.Sprintf("the current version %d of %s is not the kill switch's rotation", st.current, where)}, nil
	case len(st.older(st.current)) > 0:
		return actions.Verification{Evidence: fmt.Sprintf("versions %v of %s are not destroyed", st.older(st.current), where)}, nil
	}
	return actions.Verification{Dead: true, Evidence: fmt.Sprintf("%s metadata: version %d is the kill switch's rotation and every older version is destroyed", where, st.current)}, nil
}

// freshValues returns a fresh random value for every key of data (one key, "value",
// when data is empty): the shape of every version the kill switch writes.
func freshValues(data map[string]any) (map[string]any, error) {
	fresh := map[string]any{}
	for k := range data {
		v, err := randomValue()
		if err != nil {
			return nil, killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		fresh[k] = v
	}
	if len(fresh) == 0 {
		v, err := randomValue()
		if err != nil {
			return nil, killswitch.Permanent(killswitch.ReasonInternal, err)
		}
		fresh["value"] = v
	}
	return fresh, nil
}

func randomValue() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("vault.rotate_kv: random value: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
