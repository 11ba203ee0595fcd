package actions

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NotifySubjectPrefix is where notify actions publish: killswitch.notify.<vendor>.
const NotifySubjectPrefix = "killswitch.notify"

// Publisher is the part of a NATS connection the messaging executors use.
type Publisher interface {
	PublishMsg(m *nats.Msg) error
}

// sent is the verification of actions that send something: delivery is the proof.
func sent(what string) Verification { return Verification{Dead: true, Evidence: what} }

// Notify publishes the incident for humans (and paging bridges) on
// killswitch.notify.<vendor>, with the action's message in the Killswitch-Message header.
type Notify struct {
	NC Publisher
}

var _ Executor = Notify{}

// Plan implements Executor.
func (n Notify) Plan(_ context.Context, t Target) (Plan, error) {
	return Plan{Summary: "notify on " + notifySubject(t.Vendor), Targets: []string{notifySubject(t.Vendor)}}, nil
}

// Apply implements Executor.
func (n Notify) Apply(_ context.Context, t Target) (Outcome, error) {
	m := nats.NewMsg(notifySubject(t.Vendor))
	m.Data = t.Payload
	m.Header.Set("Killswitch-Incident", t.Incident)
	m.Header.Set("Killswitch-Message", oneLine(t.Action.Message))
	if err := n.NC.PublishMsg(m); err != nil {
		return Outcome{}, Retryable(fmt.Errorf("notify: %w", err))
	}
	return Outcome{Detail: "published on " + m.Subject}, nil
}

// Verify implements Executor.
func (n Notify) Verify(_ context.Context, t Target) (Verification, error) {
	return sent("published on " + notifySubject(t.Vendor)), nil
}

func notifySubject(vendor string) string {
	return NotifySubjectPrefix + "." + strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r <= ' ' {
			return '_'
		}
		return r
	}, vendor)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// NATSPublish publishes the incident on the action's subject for other automation
// (e.g. an egress proxy that blocks the vendor). When a stream captures the subject the
// publication is acknowledged by it, with the action ID as Nats-Msg-Id (a retry stores
// it once); otherwise it is a core NATS publication.
type NATSPublish struct {
	NC *nats.Conn
	JS jetstream.JetStream
}

var _ Executor = NATSPublish{}

// Plan implements Executor.
func (p NATSPublish) Plan(_ context.Context, t Target) (Plan, error) {
	if err := checkSubject(t.Action.Subject); err != nil {
		return Plan{}, err
	}
	return Plan{Summary: "publish the incident on " + t.Action.Subject, Targets: []string{t.Action.Subject}}, nil
}

// Apply implements Executor.
func (p NATSPublish) Apply(ctx context.Context, t Target) (Outcome, error) {
	if err := checkSubject(t.Action.Subject); err != nil {
		return Outcome{}, err
	}
	m := nats.NewMsg(t.Action.Subject)
	m.Data = t.Payload
	m.Header.Set("Killswitch-Incident", t.Incident)
	m.Header.Set(jetstream.MsgIDHeader, ActionID(t.Incident, t.Action))
	_, err := p.JS.PublishMsg(ctx, m)
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		if err := p.NC.PublishMsg(m); err != nil {
			return Outcome{}, Retryable(fmt.Errorf("nats.publish: %w", err))
		}
		return Outcome{Detail: "published on " + m.Subject + " (no stream captures it)"}, nil
	case err != nil:
		return Outcome{}, Retryable(fmt.Errorf("nats.publish: %w", err))
	}
	return Outcome{Detail: "stored by a stream on " + m.Subject}, nil
}

// Verify implements Executor.
func (p NATSPublish) Verify(_ context.Context, t Target) (Verification, error) {
	return sent("published on " + t.Action.Subject), nil
}

func checkSubject(s string) error {
	if s == "" || strings.ContainsAny(s, "*> \t\r\n") || strings.HasPrefix(s, "$") || strings.HasPrefix(s, "_INBOX") {
		return Permanent(fmt.Errorf("nats.publish: %q is not a concrete subject", s))
	}
	return nil
}

// Webhook posts the incident as JSON to a configured endpoint, signed with
// HMAC-SHA256 (X-Killswitch-Signature: sha256=<hex>). 5xx, 429 and network errors are
// retryable; other 4xx are permanent.
type Webhook struct {
	Endpoints map[string]config.Webhook
	// Secret returns the signing key named by an endpoint's secret_env (os.Getenv).
	Secret func(name string) string
	Client *http.Client
}

var _ Executor = Webhook{}

func (w Webhook) endpoint(t Target) (config.Webhook, error) {
	ep, ok := w.Endpoints[t.Action.Webhook]
	if !ok {
		return ep, Permanent(fmt.Errorf("webhook %q is not configured", t.Action.Webhook))
	}
	return ep, nil
}

// Plan implements Executor.
func (w Webhook) Plan(_ context.Context, t Target) (Plan, error) {
	ep, err := w.endpoint(t)
	if err != nil {
		return Plan{}, err
	}
	return Plan{Summary: "POST the incident to webhook " + t.Action.Webhook, Targets: []string{ep.URL}}, nil
}

// Apply implements Executor.
func (w Webhook) Apply(ctx context.Context, t Target) (Outcome, error) {
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
		return Outcome{}, Permanent(fmt.Errorf("webhook %s: %w", t.Action.Webhook, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Killswitch-Incident", t.Incident)
	req.Header.Set("Idempotency-Key", ActionID(t.Incident, t.Action))
	if ep.SecretEnv != "" && w.Secret != nil {
		key := w.Secret(ep.SecretEnv)
		if key == "" {
			return Outcome{}, Permanent(fmt.Errorf("webhook %s: signing key $%s is empty", t.Action.Webhook, ep.SecretEnv))
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
		return Outcome{}, Retryable(fmt.Errorf("webhook %s: %w", t.Action.Webhook, err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return Outcome{Detail: fmt.Sprintf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode)}, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return Outcome{}, Retryable(fmt.Errorf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode))
	}
	return Outcome{}, Permanent(fmt.Errorf("webhook %s answered %d", t.Action.Webhook, resp.StatusCode))
}

// Verify implements Executor.
func (w Webhook) Verify(_ context.Context, t Target) (Verification, error) {
	return sent("webhook " + t.Action.Webhook + " acknowledged with 2xx"), nil
}

// Messaging returns the executors for notify, nats.publish and webhook.
func Messaging(nc *nats.Conn, js jetstream.JetStream, hooks map[string]config.Webhook, secret func(string) string) Registry {
	return Registry{
		playbooks.ActionNotify:      Notify{NC: nc},
		playbooks.ActionNATSPublish: NATSPublish{NC: nc, JS: js},
		playbooks.ActionWebhook:     Webhook{Endpoints: hooks, Secret: secret, Client: &http.Client{}},
	}
}
