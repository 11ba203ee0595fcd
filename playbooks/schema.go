package playbooks

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/open-policy-agent/opa/v1/util"
)

// ErrMalformed is wrapped by every error about a decision outside the closed schema.
var ErrMalformed = errors.New("malformed decision")

// Bounds on the strings of a decision.
const (
	maxNameLen    = 256
	maxMessageLen = 4096
	maxReasonLen  = 4096
)

// maxSeverity returns the more severe of a and b (a known severity beats an unknown one).
func maxSeverity(a, b string) string {
	if detectors.Severity(b).Rank() > detectors.Severity(a).Rank() {
		return b
	}
	return a
}

// wildcards are the characters no target name may contain: glob, NATS and Vault prefix
// wildcards.
const wildcards = "*?[]{}>%"

// checkName validates a credential or webhook name: non-empty, bounded, printable, no
// wildcard.
func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("empty name")
	case len(s) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("name %q is not valid UTF-8", s)
	case strings.ContainsAny(s, wildcards):
		return fmt.Errorf("name %q contains a wildcard (%s are not allowed)", s, wildcards)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("name %q contains spaces or control characters", s)
	}
	return nil
}

// checkSubject validates a NATS subject for nats.publish: dot-separated non-empty tokens,
// no wildcard, no spaces.
func checkSubject(s string) error {
	if err := checkName(s); err != nil {
		return err
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" {
			return fmt.Errorf("subject %q has an empty token", s)
		}
	}
	return nil
}

// ParseDecisionJSON decodes a playbook's decision from JSON and validates it against the
// closed schema (see ParseDecision).
func ParseDecisionJSON(b []byte, maxActions int) (Decision, error) {
	var raw any
	if err := util.UnmarshalJSON(b, &raw); err != nil {
		return Decision{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return ParseDecision(raw, maxActions)
}

// ParseDecision validates the value one playbook's `decision` rule produced (as decoded
// from JSON: maps, slices, strings, bools, numbers) and converts it to a Decision.
//
// The schema is closed: an object with "actions" (an array of at most maxActions actions,
// required), "requires_approval" (bool), "reason" (string, required when the decision has
// actions or asks for approval) and "severity" (info, low, medium, high or critical); any
// other key is an error (an empty severity is the same as none). "veto_window" (optional)
// is a duration string such as "90s", from MinVetoWindow to MaxVetoWindow: the
// destructive actions are announced and run when it ends unless a human vetoes them. Each action has a known "type" and only the fields its type
// allows: vault.* actions name a "credential"; nats.publish a "subject" (and optionally a
// "credential" and "message"); webhook a "webhook" (and optionally a "credential" and
// "message"); notify a "message" (and optionally a "credential"). Names are non-empty,
// bounded and free of wildcards.
//
// ParseDecision does not check names against the vendor inventory: the engine does.
func ParseDecision(raw any, maxActions int) (Decision, error) {
	obj, ok := raw.(map[string]any)
	if !ok {
		return Decision{}, fmt.Errorf("%w: want an object, got %s", ErrMalformed, typeName(raw))
	}
	var d Decision
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...))
	}
	for k := range obj {
		switch k {
		case "actions", "requires_approval", "reason", "severity", "veto_window":
		default:
			bad("unknown field %q (allowed: actions, requires_approval, reason, severity, veto_window)", k)
		}
	}
	if v, ok := obj["requires_approval"]; ok {
		b, isBool := v.(bool)
		if !isBool {
			bad("requires_approval: want a boolean, got %s", typeName(v))
		}
		d.RequiresApproval = b
	}
	if v, ok := obj["reason"]; ok {
		s, isStr := v.(string)
		switch {
		case !isStr:
			bad("reason: want a string, got %s", typeName(v))
		case len(s) > maxReasonLen:
			bad("reason: longer than %d bytes", maxReasonLen)
		}
		d.Reason = s
	}
	if v, ok := obj["severity"]; ok {
		s, isStr := v.(string)
		if !isStr || (s != "" && detectors.Severity(s).Rank() < 0) {
			bad("severity: want one of info, low, medium, high, critical, got %s", describe(v))
		}
		d.Severity = s
	}
	if v, ok := obj["veto_window"]; ok {
		w, err := parseVetoWindow(v)
		if err != nil {
			bad("veto_window: %v", err)
		}
		d.VetoWindow = w
	}
	acts, ok := obj["actions"]
	if !ok {
		bad("actions: missing (a playbook that does not apply returns {\"actions\": []})")
		return Decision{}, errors.Join(errs...)
	}
	list, ok := acts.([]any)
	if !ok {
		bad("actions: want an array, got %s", typeName(acts))
		return Decision{}, errors.Join(errs...)
	}
	if len(list) > maxActions {
		bad("actions: %d actions exceed the bound of %d per decision", len(list), maxActions)
		return Decision{}, errors.Join(errs...)
	}
	d.Actions = make([]Action, 0, len(list))
	for i, v := range list {
		a, err := parseAction(v)
		if err != nil {
			bad("actions[%d]: %v", i, err)
			continue
		}
		d.Actions = append(d.Actions, a)
	}
	if (len(list) > 0 || d.RequiresApproval) && strings.TrimSpace(d.Reason) == "" {
		bad("reason: required when the decision has actions or asks for approval")
	}
	if err := errors.Join(errs...); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// actionFields says which optional and required fields each action type takes.
type actionFields struct {
	required, optional []string
}

func fieldsFor(t killswitch.ActionType) actionFields {
	switch {
	case t.Destructive():
		return actionFields{required: []string{"credential"}}
	case t == killswitch.ActionNATSPublish:
		return actionFields{required: []string{"subject"}, optional: []string{"credential", "message"}}
	case t == killswitch.ActionWebhook:
		return actionFields{required: []string{"webhook"}, optional: []string{"credential", "message"}}
	default: // notify
		return actionFields{required: []string{"message"}, optional: []string{"credential"}}
	}
}

func parseAction(v any) (Action, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return Action{}, fmt.Errorf("want an object, got %s", typeName(v))
	}
	tv, ok := obj["type"]
	if !ok {
		return Action{}, errors.New("type: missing")
	}
	ts, ok := tv.(string)
	if !ok {
		return Action{}, fmt.Errorf("type: want a string, got %s", typeName(tv))
	}
	t := killswitch.ActionType(ts)
	if !t.Known() {
		return Action{}, fmt.Errorf("type: unknown action type %q", ts)
	}
	f := fieldsFor(t)
	allowed := map[string]bool{"type": true}
	for _, k := range f.required {
		allowed[k] = true
	}
	for _, k := range f.optional {
		allowed[k] = true
	}
	var errs []error
	for k := range obj {
		if !allowed[k] {
			errs = append(errs, fmt.Errorf("field %q is not allowed for type %s", k, t))
		}
	}
	for _, k := range f.required {
		if _, ok := obj[k]; !ok {
			errs = append(errs, fmt.Errorf("%s: required for type %s", k, t))
		}
	}
	a := Action{Type: t}
	str := func(k string) (string, bool) {
		v, ok := obj[k]
		if !ok || !allowed[k] {
			return "", false
		}
		s, isStr := v.(string)
		if !isStr {
			errs = append(errs, fmt.Errorf("%s: want a string, got %s", k, typeName(v)))
			return "", false
		}
		return s, true
	}
	if s, ok := str("credential"); ok {
		if err := checkName(s); err != nil {
			errs = append(errs, fmt.Errorf("credential: %w", err))
		}
		a.Credential = s
	}
	if s, ok := str("subject"); ok {
		if err := checkSubject(s); err != nil {
			errs = append(errs, fmt.Errorf("subject: %w", err))
		}
		a.Subject = s
	}
	if s, ok := str("webhook"); ok {
		if err := checkName(s); err != nil {
			errs = append(errs, fmt.Errorf("webhook: %w", err))
		}
		a.Webhook = s
	}
	if s, ok := str("message"); ok {
		switch {
		case strings.TrimSpace(s) == "":
			errs = append(errs, errors.New("message: empty"))
		case len(s) > maxMessageLen:
			errs = append(errs, fmt.Errorf("message: longer than %d bytes", maxMessageLen))
		case !utf8.ValidString(s):
			errs = append(errs, errors.New("message: not valid UTF-8"))
		}
		a.Message = s
	}
	if err := errors.Join(errs...); err != nil {
		return Action{}, err
	}
	return a, nil
}

// parseVetoWindow reads a decision's veto_window: a Go duration string, at least
// MinVetoWindow and at most MaxVetoWindow.
func parseVetoWindow(v any) (Duration, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("want a duration string such as \"90s\", got %s", typeName(v))
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration such as \"90s\" or \"5m\"", s)
	case d < MinVetoWindow:
		return 0, fmt.Errorf("%q is shorter than %s (a human needs time to veto)", s, MinVetoWindow)
	case d > MaxVetoWindow:
		return 0, fmt.Errorf("%q is longer than %s (ask for requires_approval instead)", s, MaxVetoWindow)
	}
	return Duration(d), nil
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

func describe(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return typeName(v)
}
