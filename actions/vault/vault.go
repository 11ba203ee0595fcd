// Package vault holds the executors that take a vendor's credentials away through
// HashiCorp Vault: revoke a token by accessor, destroy an AppRole secret-id, revoke a
// lease or every lease under a prefix (synchronously), rotate a KV v2 secret and destroy
// its old versions, quarantine an ACL policy (deny-all, reversible), and disable an
// identity entity (every token of it denied at once, reversibly).
//
// For kill-vendor, Enumerate resolves what a vendor holds in Vault beyond its listed
// credentials (the secret-ids of its AppRole roles, its lease prefixes, its KV secrets,
// its identity entity) as credentials of the same kinds. For restore after a false
// positive, EnableEntity, ReissueSecretID, ReissueKV and RestorePolicy each take one
// step back, idempotently, and verify it; what is handed to the vendor again (a new
// secret-id, a new KV value) is response-wrapped.
//
// Every executor follows actions.Executor: Plan does read-only lookups, Apply is
// idempotent (already gone is success, reported as AlreadyDone) and Verify looks again
// and reports Dead only when the lookup proves the credential no longer works — a 204
// from Vault is never taken as proof.
//
// Errors are classified for the runner's retry loop: transport errors, timeouts, 5xx,
// 429 and 412 are retryable; 400, 403, 404 on a configuration path and a credential
// that is not what the inventory says are permanent. Accessors, secret-id accessors
// and lease IDs never appear in clear in plans, outcomes or errors: they are rendered
// with the target's Fingerprinter.
//
// The package also generates the policy scoped to an inventory (PolicyFor: exact
// paths, allowed_parameters pinning the accessors and lease IDs), checks that a token
// holds what the inventory needs (CheckCapabilities) and nothing more (CheckScope),
// and ships an example policy (ShippedPolicy).
package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
)

// New returns the Vault executors, one per vault.* action type, on client. It sets the
// client's own retries to zero: the runner retries with backoff and records every
// attempt, and a hidden retry inside the client would blur both. Deadlines come from
// the context of every call.
func New(client *api.Client) actions.Registry {
	client.SetMaxRetries(0)
	c := &caller{c: client}
	return actions.Registry{
		killswitch.ActionRevokeTokenAccessor: TokenAccessor{c},
		killswitch.ActionDestroySecretID:     SecretID{c},
		killswitch.ActionRevokeLease:         Lease{c},
		killswitch.ActionRevokeLeasePrefix:   LeasePrefix{c},
		killswitch.ActionRotateKV:            KV{c},
		killswitch.ActionQuarantinePolicy:    Quarantine{c},
		killswitch.ActionDisableEntity:       Entity{c},
	}
}

// ErrVault is wrapped by every error Vault answered with (as opposed to transport errors).
var ErrVault = errors.New("vault")

// reply is one Vault answer.
type reply struct {
	status   int
	data     map[string]any
	errs     []string
	warnings []string
}

// has reports whether one of Vault's error or warning messages contains s.
func (r *reply) has(s string) bool {
	for _, m := range slices.Concat(r.errs, r.warnings) {
		if strings.Contains(m, s) {
			return true
		}
	}
	if m, ok := r.data["error"].(string); ok && strings.Contains(m, s) {
		return true
	}
	return false
}

// message is Vault's own explanation, one line.
func (r *reply) message() string {
	msgs := slices.Clone(r.errs)
	if m, ok := r.data["error"].(string); ok {
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return http.StatusText(r.status)
	}
	return strings.Join(strings.Fields(strings.Join(msgs, "; ")), " ")
}

// caller makes raw Vault calls so that status codes, errors and warnings are all seen
// (the api client's typed helpers fold 404s and warnings away).
type caller struct {
	c *api.Client
}

// call sends one request. method is GET, LIST, PUT or PATCH. A transport failure is
// returned as a retryable error; any HTTP answer is returned as a reply for the caller
// to interpret (see fail).
func (c *caller) call(ctx context.Context, method, path string, body any) (*reply, error) {
	var (
		resp *api.Response
		err  error
	)
	l := c.c.Logical()
	// The raw request, not Logical().ReadRaw/WriteRaw: those cancel the client's
	// timeout context when they return, before the body is read, and a large answer
	// (sys/capabilities-self on many paths) then reads as "context canceled".
	switch method {
	case http.MethodGet:
		resp, err = c.c.RawRequestWithContext(ctx, c.c.NewRequest(http.MethodGet, "/v1/"+path)) //nolint:staticcheck // see above
	case "LIST":
		req := c.c.NewRequest(http.MethodGet, "/v1/"+path)
		req.Params.Set("list", "true")
		resp, err = c.c.RawRequestWithContext(ctx, req) //nolint:staticcheck // see above
	case http.MethodPut:
		b, merr := json.Marshal(body)
		if merr != nil {
			return nil, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("vault %s %s: %w", method, path, merr))
		}
		req := c.c.NewRequest(http.MethodPut, "/v1/"+path)
		req.BodyBytes = b
		resp, err = c.c.RawRequestWithContext(ctx, req) //nolint:staticcheck // see above
	case http.MethodPatch:
		// JSON merge patch (KV v2 metadata); the raw patch call sends the wrong content type.
		m, _ := body.(map[string]any)
		sec, err := l.JSONMergePatch(ctx, path, m)
		var re *api.ResponseError
		switch {
		case errors.As(err, &re):
			return &reply{status: re.StatusCode, errs: re.Errors}, nil
		case err != nil:
			return nil, unreachable(fmt.Errorf("vault %s %s: %w", method, path, err))
		}
		r := &reply{status: http.StatusOK}
		if sec != nil {
			r.data, r.warnings = sec.Data, sec.Warnings
		}
		return r, nil
	default:
		return nil, killswitch.Permanent(killswitch.ReasonInternal, fmt.Errorf("vault: method %s is not supported", method))
	}
	if resp == nil {
		if err == nil {
			err = errors.New("no response")
		}
		return nil, unreachable(fmt.Errorf("vault %s %s: %w", method, path, err))
	}
	defer resp.Body.Close()
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if rerr != nil {
		return nil, unreachable(fmt.Errorf("vault %s %s: read answer: %w", method, path, rerr))
	}
	r := &reply{status: resp.StatusCode}
	if len(bytes.TrimSpace(raw)) > 0 {
		var doc struct {
			Data     map[string]any `json:"data"`
			Errors   []string       `json:"errors"`
			Warnings []string       `json:"warnings"`
		}
		if jerr := json.Unmarshal(raw, &doc); jerr != nil && r.status < 400 {
			return nil, killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("vault %s %s: answer is not JSON: %w", method, path, jerr))
		}
		r.data, r.errs, r.warnings = doc.Data, doc.Errors, doc.Warnings
	}
	return r, nil
}

// fail turns an unexpected answer into a classified error: 5xx, 429 and 412 (a
// standby without the index yet) are retryable; everything else is permanent. redact
// is applied to Vault's message so that echoed accessors do not leak.
func fail(op string, r *reply, redact func(string) string) error {
	msg := r.message()
	if redact != nil {
		msg = redact(msg)
	}
	err := fmt.Errorf("%w: %s answered %d: %s", ErrVault, op, r.status, msg)
	switch {
	case r.status >= 500:
		return killswitch.Retryable(killswitch.ReasonUnavailable, err)
	case r.status == http.StatusTooManyRequests:
		return killswitch.Retryable(killswitch.ReasonRateLimited, err)
	case r.status == http.StatusPreconditionFailed:
		return killswitch.Retryable(killswitch.ReasonConflict, err)
	case r.status == http.StatusForbidden:
		return killswitch.Permanent(killswitch.ReasonDenied, fmt.Errorf("%w (the kill switch's token lacks this capability: grant the policy of `killswitch vault policy`)", err))
	}
	return killswitch.Permanent(killswitch.ReasonInvalid, err)
}

// unreachable marks a transport failure: retryable, and a timeout when a deadline passed.
func unreachable(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return killswitch.Retryable(killswitch.ReasonTimeout, err)
	}
	return killswitch.Retryable(killswitch.ReasonUnavailable, err)
}

// ok reports a 2xx answer.
func (r *reply) ok() bool { return r.status >= 200 && r.status < 300 }

// redactor replaces secret in Vault's messages by its fingerprint.
func redactor(t actions.Target, secret string) func(string) string {
	return func(s string) string {
		if secret == "" {
			return s
		}
		return strings.ReplaceAll(s, secret, t.Fingerprint.Of(secret))
	}
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func num(m map[string]any, k string) int64 {
	switch v := m[k].(type) {
	case float64:
		return int64(v)
	case json.Number:
		n, _ := v.Int64()
		return n
	}
	return 0
}

func strs(m map[string]any, k string) []string {
	l, _ := m[k].([]any)
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
