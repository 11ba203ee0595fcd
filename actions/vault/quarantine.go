package vault

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// Quarantine replaces an ACL policy by a deny-all policy that carries the original,
// base64-encoded, in a comment line: the quarantine is one atomic write, needs no
// other storage, and Restore puts the original back. Every token holding the policy
// loses what it granted at once (other policies those tokens hold are untouched).
// Verified by reading the policy back. The root and default policies are refused.
type Quarantine struct{ c *caller }

var _ actions.Executor = Quarantine{}

// originalPrefix starts the comment line that keeps the original policy.
const originalPrefix = "# killswitch-original: "

// ErrNotQuarantined is returned by Restore for a policy the kill switch did not quarantine.
var ErrNotQuarantined = errors.New("the policy is not quarantined by killswitch")

// quarantined renders the deny-all policy that keeps original.
func quarantined(name, original string) string {
	return "# Quarantined by killswitch: this policy grants nothing and denies every path.\n" +
		"# Restore the original with: killswitch vault restore-policy " + name + "\n" +
		originalPrefix + base64.StdEncoding.EncodeToString([]byte(original)) + "\n" +
		"path \"*\" {\n  capabilities = [\"deny\"]\n}\n"
}

// original extracts the original policy from a quarantined one.
func original(text string) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), originalPrefix); ok {
			b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
			return string(b), err == nil
		}
	}
	return "", false
}

func policyName(t actions.Target) (string, error) {
	name := t.Identity.Policy
	switch {
	case name == "" || strings.ContainsAny(name, "/*+ "):
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.quarantine_policy: %s/%s needs an exact policy name in the inventory", t.Vendor, t.Credential))
	case name == "root" || name == "default":
		return "", killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("vault.quarantine_policy: the %s policy is never quarantined", name))
	}
	return name, nil
}

// readPolicy returns the policy text; found is false when there is no such policy.
func (c *caller) readPolicy(ctx context.Context, name string) (text string, found bool, err error) {
	r, err := c.call(ctx, http.MethodGet, "sys/policies/acl/"+name, nil)
	switch {
	case err != nil:
		return "", false, err
	case r.status == http.StatusNotFound:
		return "", false, nil
	case !r.ok():
		return "", false, fail("read policy", r, nil)
	}
	return str(r.data, "policy"), true, nil
}

// read returns the policy the target names and its text.
func (e Quarantine) read(ctx context.Context, t actions.Target) (name, text string, found bool, err error) {
	if name, err = policyName(t); err != nil {
		return "", "", false, err
	}
	text, found, err = e.c.readPolicy(ctx, name)
	return name, text, found, err
}

// Plan implements actions.Executor.
func (e Quarantine) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	name, text, found, err := e.read(ctx, t)
	switch {
	case err != nil:
		return actions.Plan{}, err
	case !found:
		return actions.Plan{Summary: "policy " + name + " does not exist: it grants nothing", Targets: []string{"policy " + name}, AlreadyGone: true}, nil
	}
	if _, ok := original(text); ok {
		return actions.Plan{Summary: "policy " + name + " is already quarantined", Targets: []string{"policy " + name}, AlreadyGone: true}, nil
	}
	return actions.Plan{
		Summary: fmt.Sprintf("replace policy %s (%d path rules) by deny-all, keeping the original for restore; every token holding it loses what it granted",
			name, strings.Count(text, "path ")),
		Targets: []string{"policy " + name},
	}, nil
}

// Apply implements actions.Executor.
func (e Quarantine) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	name, text, found, err := e.read(ctx, t)
	switch {
	case err != nil:
		return actions.Outcome{}, err
	case !found:
		return actions.Outcome{AlreadyDone: true, Detail: "policy " + name + " does not exist"}, nil
	}
	if _, ok := original(text); ok {
		return actions.Outcome{AlreadyDone: true, Detail: "policy " + name + " was already quarantined"}, nil
	}
	r, err := e.c.call(ctx, http.MethodPut, "sys/policies/acl/"+name, map[string]any{"policy": quarantined(name, text)})
	if err != nil {
		return actions.Outcome{}, err
	}
	if !r.ok() {
		return actions.Outcome{}, fail("write policy", r, nil)
	}
	return actions.Outcome{Detail: "policy " + name + " replaced by deny-all (original kept for restore)"}, nil
}

// Verify implements actions.Executor.
func (e Quarantine) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	name, text, found, err := e.read(ctx, t)
	switch {
	case err != nil:
		return actions.Verification{}, err
	case !found:
		return actions.Verification{Dead: true, Evidence: "policy " + name + " does not exist"}, nil
	}
	if orig, ok := original(text); ok && text == quarantined(name, orig) {
		return actions.Verification{Dead: true, Evidence: "sys/policies/acl/" + name + " now reads deny-all on every path"}, nil
	}
	return actions.Verification{Evidence: "sys/policies/acl/" + name + " does not read as the quarantine policy"}, nil
}

// Restore puts back the policy that Quarantine replaced. It returns ErrNotQuarantined
// when the policy does not carry a kept original.
func Restore(ctx context.Context, client *api.Client, name string) error {
	c := &caller{c: client}
	text, found, err := c.readPolicy(ctx, name)
	switch {
	case err != nil:
		return err
	case !found:
		return fmt.Errorf("restore policy %s: it does not exist", name)
	}
	orig, ok := original(text)
	if !ok {
		return fmt.Errorf("restore policy %s: %w", name, ErrNotQuarantined)
	}
	r, err := c.call(ctx, http.MethodPut, "sys/policies/acl/"+name, map[string]any{"policy": orig})
	if err != nil {
		return err
	}
	if !r.ok() {
		return fail("restore policy", r, nil)
	}
	return nil
}
