package actions

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/killswitch-dev/killswitch"
)

// Webhooks is the executor of webhook actions: it posts the incident as JSON to the
// configured endpoint the action names, signed with HMAC-SHA256
// (X-Killswitch-Signature: sha256=<hex>), with the action ID as Idempotency-Key. 5xx,
// 429 and network errors are retryable; other 4xx are permanent.
type Webhooks struct {
	// Endpoints are the configured webhooks (Settings.Webhooks).
	Endpoints map[string]Webhook
	// Secret returns the signing key named by an endpoint's secret_env (os.Getenv).
	Secret func(name string) string
	// Client sends the requests; nil is http.DefaultClient.
	Client *http.Client
}

var _ Executor = Webhooks{}

func (w Webhooks) endpoint(t Target) (Webhook, error) {
	ep, ok := w.Endpoints[t.Action.Webhook]
	if !ok {
		return ep, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("webhook %q is not configured", t.Action.Webhook))
	}
	return ep, nil
}

// Plan implements Executor.
func (w Webhooks) Plan(_ context.Context, t Target) (Plan, error) {
	ep, err := w.endpoint(t)
	if err != nil {
		return Plan{}, err
	}
	return Plan{Summary: "POST the incident to webhook " + t.Action.Webhook, Targets: []string{ep.URL}}, nil
}

// Apply implements Executor.
func (w Webhooks) Apply(ctx context.Context, t Target) (Outcome, error) {
	ep, err := w.endpoint(t)
	if err != nil {
		return Outcome{}, err
	}
	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(t.Payload))
	if err != nil {
		return Outcome{}, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("webhook %s: %w", t.Action.Webhook, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Killswitch-Incident", t.Incident)
	req.Header.Set("Idempotency-Key", ActionID(t.Incident, t.Action))
	if ep.SecretEnv != "" && w.Secret != nil {
		key := w.Secret(ep.SecretEnv)
		if key == "" {
			return Outcome{}, killswitch.Permanent(killswitch.ReasonMisconfigured, fmt.Errorf("webhook %s: signing key $%s is empty", t.Action.Webhook, ep.SecretEnv))
		}
		m := hmac.New(sha256.New, []byte(key))
		m.Write(t.Payload)
		req.Header.Set("X-Killswitch-Signature", "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	client := w.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("webhook %s: %w", t.Action.Webhook, err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return Outcome{Detail: fmt.Sprintf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode)}, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		return Outcome{}, killswitch.Retryable(killswitch.ReasonRateLimited, fmt.Errorf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode))
	case resp.StatusCode >= 500:
		return Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode))
	}
	return Outcome{}, killswitch.Permanent(killswitch.ReasonDenied, fmt.Errorf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode))
}

// Verify implements Executor.
func (w Webhooks) Verify(_ context.Context, t Target) (Verification, error) {
	return Verification{Dead: true, Evidence: "webhook " + t.Action.Webhook + " acknowledged with 2xx"}, nil
}
