// Package nats has the executors that act through NATS: notify (a message for humans
// and paging bridges on killswitch.notify.<vendor>) and nats.publish (the incident on a
// subject, e.g. for an egress proxy that blocks the vendor). Delivery is their proof.
package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NotifySubjectPrefix is where notify actions publish: killswitch.notify.<vendor>.
const NotifySubjectPrefix = "killswitch.notify"

// NotifySubject is the subject a notification about vendor is published on.
func NotifySubject(vendor string) string { return NotifySubjectPrefix + "." + SubjectToken(vendor) }

// SubjectToken makes s safe as one NATS subject token: dots, wildcards, white space and
// control characters become "_", and an empty s is "_".
func SubjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}

// Publisher is the part of a NATS connection the notify executor uses.
type Publisher interface {
	PublishMsg(m *nats.Msg) error
}

// Notify publishes the incident for humans (and paging bridges) on
// killswitch.notify.<vendor>, with the action's message in the Killswitch-Message header.
type Notify struct {
	NC Publisher
}

var _ actions.Executor = Notify{}

// Plan implements actions.Executor.
func (n Notify) Plan(_ context.Context, t actions.Target) (actions.Plan, error) {
	s := NotifySubject(t.Vendor)
	return actions.Plan{Summary: "notify on " + s, Targets: []string{s}}, nil
}

// Apply implements actions.Executor.
func (n Notify) Apply(_ context.Context, t actions.Target) (actions.Outcome, error) {
	m := nats.NewMsg(NotifySubject(t.Vendor))
	m.Data = t.Payload
	m.Header.Set("Killswitch-Incident", t.Incident)
	m.Header.Set("Killswitch-Message", strings.Join(strings.Fields(t.Action.Message), " "))
	if err := n.NC.PublishMsg(m); err != nil {
		return actions.Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("notify: %w", err))
	}
	return actions.Outcome{Detail: "published on " + m.Subject}, nil
}

// Verify implements actions.Executor.
func (n Notify) Verify(_ context.Context, t actions.Target) (actions.Verification, error) {
	return actions.Verification{Dead: true, Evidence: "published on " + NotifySubject(t.Vendor)}, nil
}

// Publish publishes the incident on the action's subject for other automation (e.g. an
// egress proxy that blocks the vendor). When a stream captures the subject the
// publication is acknowledged by it, with the action ID as Nats-Msg-Id (a retry stores
// it once); otherwise it is a core NATS publication.
type Publish struct {
	NC *nats.Conn
	JS jetstream.JetStream
}

var _ actions.Executor = Publish{}

// Plan implements actions.Executor.
func (p Publish) Plan(_ context.Context, t actions.Target) (actions.Plan, error) {
	if err := checkSubject(t.Action.Subject); err != nil {
		return actions.Plan{}, err
	}
	return actions.Plan{Summary: "publish the incident on " + t.Action.Subject, Targets: []string{t.Action.Subject}}, nil
}

// Apply implements actions.Executor.
func (p Publish) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	if err := checkSubject(t.Action.Subject); err != nil {
		return actions.Outcome{}, err
	}
	m := nats.NewMsg(t.Action.Subject)
	m.Data = t.Payload
	m.Header.Set("Killswitch-Incident", t.Incident)
	m.Header.Set(jetstream.MsgIDHeader, actions.ActionID(t.Incident, t.Action))
	_, err := p.JS.PublishMsg(ctx, m)
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		if err := p.NC.PublishMsg(m); err != nil {
			return actions.Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("nats.publish: %w", err))
		}
		return actions.Outcome{Detail: "published on " + m.Subject + " (no stream captures it)"}, nil
	case err != nil:
		return actions.Outcome{}, killswitch.Retryable(killswitch.ReasonUnavailable, fmt.Errorf("nats.publish: %w", err))
	}
	return actions.Outcome{Detail: "stored by a stream on " + m.Subject}, nil
}

// Verify implements actions.Executor.
func (p Publish) Verify(_ context.Context, t actions.Target) (actions.Verification, error) {
	return actions.Verification{Dead: true, Evidence: "published on " + t.Action.Subject}, nil
}

func checkSubject(s string) error {
	if s == "" || strings.ContainsAny(s, "*> \t\r\n") || strings.HasPrefix(s, "$") || strings.HasPrefix(s, "_INBOX") {
		return killswitch.Permanent(killswitch.ReasonInvalid, fmt.Errorf("nats.publish: %q is not a concrete subject", s))
	}
	return nil
}

// Executors returns the executors for notify and nats.publish on nc.
func Executors(nc *nats.Conn, js jetstream.JetStream) actions.Registry {
	return actions.Registry{
		killswitch.ActionNotify:      Notify{NC: nc},
		killswitch.ActionNATSPublish: Publish{NC: nc, JS: js},
	}
}
