package playbooks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"go.uber.org/zap"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/detectors"
)

// Defaults of Options.
const (
	// DefaultTimeout bounds one evaluation.
	DefaultTimeout = 50 * time.Millisecond
	// DefaultMaxTargets bounds the actions of one playbook's decision and of the merged
	// decision.
	DefaultMaxTargets = 16
	// DefaultDebounce is how long Watch waits for a burst of file changes to settle.
	DefaultDebounce = 200 * time.Millisecond
	// DefaultPollInterval is how often Watch re-reads the directories as a safety net for
	// missed file-system events.
	DefaultPollInterval = 5 * time.Second
)

// Options configure an Engine. Zero values mean the documented defaults.
type Options struct {
	// Sources are the playbook trees to load: Shipped(), DirSource(dir)… At least one.
	Sources []Source
	// Logger receives reload and escalation logs. Default: no logging.
	Logger *zap.Logger
	// Clock fills Input.Now when it is zero and stamps reloads. Default clock.Real{}.
	Clock clock.Clock
	// Stopwatch measures evaluation latency only (a monotonic source); decisions never
	// depend on it. Default clock.Real{}.
	Stopwatch clock.Clock
	// Timeout bounds one evaluation; past it the decision escalates. Default 50ms.
	Timeout time.Duration
	// MaxTargets bounds the actions of one playbook's decision and of the merged
	// decision; more escalates. Default 16.
	MaxTargets int
	// Debounce is how long Watch waits for file changes to settle. Default 200ms.
	Debounce time.Duration
	// PollInterval is how often Watch re-reads the directories even without a file-system
	// event. Default 5s; negative disables polling.
	PollInterval time.Duration
	// OnReload, when set, is called after every reload attempt that found a change.
	OnReload func(ReloadEvent)
}

// ReloadEvent reports one reload attempt that found changed playbooks.
type ReloadEvent struct {
	// Revision is the revision serving after the attempt.
	Revision string
	// Previous is the revision serving before the attempt.
	Previous string
	// Err is nil when the change was swapped in, else why it was refused.
	Err error
}

// EscalationReason says why a decision escalated; it feeds metrics and the ledger.
type EscalationReason string

// The escalation reasons.
const (
	// EscalationInvalidInput: the input document is inconsistent.
	EscalationInvalidInput EscalationReason = "invalid_input"
	// EscalationEvalError: evaluation failed (conflicting values, type errors…).
	EscalationEvalError EscalationReason = "eval_error"
	// EscalationBuiltinError: a builtin failed (StrictBuiltinErrors).
	EscalationBuiltinError EscalationReason = "builtin_error"
	// EscalationTimeout: evaluation exceeded its deadline.
	EscalationTimeout EscalationReason = "timeout"
	// EscalationCanceled: the caller's context ended during evaluation.
	EscalationCanceled EscalationReason = "canceled"
	// EscalationUndefined: a playbook's decision was undefined.
	EscalationUndefined EscalationReason = "undefined"
	// EscalationMalformed: a decision is outside the closed schema or names a credential
	// it may not.
	EscalationMalformed EscalationReason = "malformed"
	// EscalationTooManyTargets: the merged decision has more actions than MaxTargets.
	EscalationTooManyTargets EscalationReason = "too_many_targets"
)

// Dropped is an action removed from a decision, with why.
type Dropped struct {
	// Action is the action as the playbook asked for it.
	Action Action `json:"action"`
	// Playbook asked for it.
	Playbook string `json:"playbook"`
	// Reason says why it was dropped.
	Reason string `json:"reason"`
}

// Result is the record of one evaluation: the decision and everything needed to audit it.
// It carries no secret.
type Result struct {
	// ID is deterministic: derived from the detection ID and the revision.
	ID string `json:"id"`
	// DetectionID is the ID of the detection decided on.
	DetectionID string `json:"detection_id"`
	// Revision is the content hash of the playbooks that decided.
	Revision string `json:"revision"`
	// InputHash is the SHA-256 of the canonical JSON input.
	InputHash string `json:"input_hash"`
	// Matched lists the playbooks whose decision had actions or asked for approval, sorted.
	Matched []string `json:"matched"`
	// Decision is the merged decision, or the escalation.
	Decision Decision `json:"decision"`
	// Escalated reports that the playbooks could not decide and a human must.
	Escalated bool `json:"escalated"`
	// Escalation says why, when Escalated.
	Escalation EscalationReason `json:"escalation,omitempty"`
	// Dropped lists the actions removed (protected credentials, destructive actions on
	// silence).
	Dropped []Dropped `json:"dropped,omitempty"`
	// Errors lists every error met, each prefixed by the playbook and its file:line.
	Errors []string `json:"errors,omitempty"`
	// EvalDuration is how long the evaluation took, by the engine's stopwatch.
	EvalDuration time.Duration `json:"eval_duration_ns"`
}

// Engine evaluates detections against a compiled set of playbooks. It is safe for
// concurrent use; Reload swaps the set atomically.
type Engine struct {
	sources    []Source
	log        *zap.Logger
	clock      clock.Clock
	stopwatch  clock.Clock
	timeout    time.Duration
	maxTargets int
	debounce   time.Duration
	poll       time.Duration
	onReload   func(ReloadEvent)

	cur      atomic.Pointer[snapshot]
	compiles atomic.Int64 // compilations and preparations, to prove none happen per evaluation

	reloadMu  sync.Mutex
	failedRev string // revision of the last content that failed to compile (under reloadMu)
	statusMu  sync.Mutex
	lastErr   error
	lastAt    time.Time
}

// snapshot is one compiled, prepared set of playbooks.
type snapshot struct {
	revision  string
	playbooks []Playbook
	vars      []string // query binding per playbook
	query     rego.PreparedEvalQuery
}

// New loads, compiles and prepares the playbooks. A compile error is a *CompileError
// listing every problem with its file:line.
func New(ctx context.Context, opts Options) (*Engine, error) {
	e := &Engine{
		sources: append([]Source(nil), opts.Sources...), log: opts.Logger,
		clock: opts.Clock, stopwatch: opts.Stopwatch, timeout: opts.Timeout,
		maxTargets: opts.MaxTargets, debounce: opts.Debounce, poll: opts.PollInterval,
		onReload: opts.OnReload,
	}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.clock == nil {
		e.clock = clock.Real{}
	}
	if e.stopwatch == nil {
		e.stopwatch = clock.Real{}
	}
	if e.timeout <= 0 {
		e.timeout = DefaultTimeout
	}
	if e.maxTargets <= 0 {
		e.maxTargets = DefaultMaxTargets
	}
	if e.debounce <= 0 {
		e.debounce = DefaultDebounce
	}
	if e.poll == 0 {
		e.poll = DefaultPollInterval
	}
	lib, err := loadLibrary(e.sources, false)
	if err != nil {
		return nil, err
	}
	snap, err := e.prepare(ctx, lib)
	if err != nil {
		return nil, err
	}
	e.cur.Store(snap)
	e.lastAt = e.clock.Now()
	e.log.Info("playbooks loaded", zap.String("revision", snap.revision), zap.Int("playbooks", len(snap.playbooks)))
	return e, nil
}

// prepare compiles the library and prepares the one query that evaluates every playbook.
// Each playbook's decision is wrapped in an array comprehension, so an undefined
// decision shows as an empty array instead of making the whole query undefined.
func (e *Engine) prepare(ctx context.Context, lib *library) (*snapshot, error) {
	c, _, pbs, err := compileSet(lib, false, false)
	if err != nil {
		return nil, err
	}
	return e.newSnapshot(ctx, c, pbs, lib.revision())
}

// newSnapshot prepares the query evaluating every playbook of a compiled set.
func (e *Engine) newSnapshot(ctx context.Context, c *ast.Compiler, pbs []Playbook, revision string) (*snapshot, error) {
	e.compiles.Add(1)
	snap := &snapshot{revision: revision, playbooks: pbs, vars: make([]string, len(pbs))}
	parts := make([]string, len(pbs))
	for i, pb := range pbs {
		snap.vars[i] = fmt.Sprintf("pb%d", i)
		parts[i] = fmt.Sprintf("%s = [d%d | d%d := %s]", snap.vars[i], i, i, pb.ref)
	}
	var err error
	snap.query, err = e.prepareQuery(ctx, c, strings.Join(parts, "; "))
	if err != nil {
		return nil, newCompileError(fromASTErrors(err))
	}
	return snap, nil
}

func (e *Engine) prepareQuery(ctx context.Context, c *ast.Compiler, q string) (rego.PreparedEvalQuery, error) {
	return rego.New(
		rego.Compiler(c),
		rego.Store(inmem.New()),
		rego.Query(q),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
}

// Compilations returns how many times the engine compiled and prepared playbooks: once at
// start and once per reload that found a change. Evaluations never compile or prepare.
func (e *Engine) Compilations() int64 { return e.compiles.Load() }

// Revision returns the revision serving now.
func (e *Engine) Revision() string { return e.cur.Load().revision }

// Playbooks returns the playbooks serving now, sorted by name.
func (e *Engine) Playbooks() []Playbook { return append([]Playbook(nil), e.cur.Load().playbooks...) }

// LastReloadError returns the error of the last reload attempt, nil when it succeeded or
// found nothing changed.
func (e *Engine) LastReloadError() error {
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	return e.lastErr
}

// LastReloadAt returns when the serving playbooks were loaded or last confirmed current.
func (e *Engine) LastReloadAt() time.Time {
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	return e.lastAt
}

// EvalOption changes one evaluation.
type EvalOption func(*evalConfig)

type evalConfig struct {
	trace io.Writer
}

// WithTrace writes OPA's evaluation trace, with source locations, to w after the
// evaluation. Tracing slows evaluation down; use it for dry runs, not in the service.
func WithTrace(w io.Writer) EvalOption { return func(c *evalConfig) { c.trace = w } }

// Evaluate decides on one detection. It never fails: every error becomes an escalation in
// the Result, which never holds a destructive action.
func (e *Engine) Evaluate(ctx context.Context, in Input, opts ...EvalOption) Result {
	var cfg evalConfig
	for _, o := range opts {
		o(&cfg)
	}
	start := e.stopwatch.Now()
	snap := e.cur.Load()
	res := e.evaluate(ctx, snap, in, cfg)
	res.EvalDuration = e.stopwatch.Now().Sub(start)
	if res.Escalated {
		e.log.Warn("playbook decision escalated",
			zap.String("decision", res.ID), zap.String("detection", res.DetectionID),
			zap.String("revision", res.Revision), zap.String("reason", string(res.Escalation)),
			zap.Strings("errors", res.Errors))
	}
	return res
}

// DecisionID returns the deterministic ID of the decision on detection detectionID by
// playbook revision revision.
func DecisionID(detectionID, revision string) string {
	h := sha256.New()
	h.Write([]byte(detectionID))
	h.Write([]byte{0})
	h.Write([]byte(revision))
	return "dec-" + hex.EncodeToString(h.Sum(nil)[:12])
}

func (e *Engine) evaluate(ctx context.Context, snap *snapshot, in Input, cfg evalConfig) Result {
	res := Result{
		ID: DecisionID(in.Detection.ID, snap.revision), DetectionID: in.Detection.ID,
		Revision: snap.revision, Matched: []string{},
	}
	if in.Now.IsZero() {
		in.Now = e.clock.Now()
	}
	if err := in.Validate(); err != nil {
		return e.escalate(res, in, EscalationInvalidInput, []string{err.Error()})
	}
	b, hash, err := in.encode()
	if err != nil {
		return e.escalate(res, in, EscalationInvalidInput, []string{err.Error()})
	}
	res.InputHash = hash
	val, err := jsonToValue(b)
	if err != nil {
		return e.escalate(res, in, EscalationInvalidInput, []string{err.Error()})
	}

	ectx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	// Cancel the interpreter when the deadline passes or the caller gives up, without the
	// goroutine per evaluation that OPA starts to watch a context.
	interrupt := topdown.NewCancel()
	stop := context.AfterFunc(ectx, interrupt.Cancel)
	defer stop()
	evalOpts := []rego.EvalOption{rego.EvalParsedInput(val), rego.EvalTime(in.Now), rego.EvalExternalCancel(interrupt)}
	var buf *topdown.BufferTracer
	if cfg.trace != nil {
		buf = topdown.NewBufferTracer()
		evalOpts = append(evalOpts, rego.EvalQueryTracer(buf))
	}
	rs, err := snap.query.Eval(ectx, evalOpts...)
	if buf != nil {
		topdown.PrettyTraceWithLocation(cfg.trace, *buf)
	}
	if err != nil {
		return e.escalate(res, in, classify(ctx, ectx, err), []string{err.Error()})
	}
	if len(rs) != 1 {
		return e.escalate(res, in, EscalationUndefined, []string{fmt.Sprintf("the playbook query returned %d results, want 1", len(rs))})
	}

	type outcome struct {
		pb Playbook
		d  Decision
	}
	var (
		outcomes []outcome
		errs     []string
		reason   EscalationReason
	)
	fail := func(r EscalationReason, pb Playbook, format string, args ...any) {
		if reason == "" || r == EscalationUndefined {
			reason = r
		}
		errs = append(errs, fmt.Sprintf("%s (%s:%d): %s", pb.Name, pb.File, pb.Line, fmt.Sprintf(format, args...)))
	}
	for i, pb := range snap.playbooks {
		vals, _ := rs[0].Bindings[snap.vars[i]].([]any)
		switch len(vals) {
		case 0:
			fail(EscalationUndefined, pb, "decision is undefined (every playbook must declare `default decision := {\"actions\": []}`)")
			continue
		case 1:
		default:
			fail(EscalationEvalError, pb, "decision has %d values", len(vals))
			continue
		}
		d, err := ParseDecision(vals[0], e.maxTargets)
		if err != nil {
			fail(EscalationMalformed, pb, "%v", err)
			continue
		}
		kept, dropped, terrs := checkTargets(pb, d.Actions, in)
		for _, te := range terrs {
			fail(EscalationMalformed, pb, "%v", te)
		}
		res.Dropped = append(res.Dropped, dropped...)
		d.Actions = kept
		if len(kept) > 0 || len(dropped) > 0 || d.RequiresApproval {
			outcomes = append(outcomes, outcome{pb: pb, d: d})
		}
	}
	if len(errs) > 0 {
		return e.escalate(res, in, reason, errs)
	}

	// Merge: union of actions (deduplicated), approval if any asks, the longest veto
	// window any asks for, the worst severity.
	merged := Decision{Actions: []Action{}, Severity: string(in.Detection.Severity)}
	type actionKey struct {
		t                                  killswitch.ActionType
		credential, subject, webhook, text string
	}
	byKey := map[actionKey]*Action{}
	var reasons []string
	for _, o := range outcomes {
		res.Matched = append(res.Matched, o.pb.Name)
		merged.RequiresApproval = merged.RequiresApproval || o.d.RequiresApproval
		merged.VetoWindow = max(merged.VetoWindow, o.d.VetoWindow)
		if o.d.Severity != "" {
			merged.Severity = maxSeverity(merged.Severity, o.d.Severity)
		}
		reasons = append(reasons, o.pb.Name+": "+o.d.Reason)
		for _, a := range o.d.Actions {
			k := actionKey{a.Type, a.Credential, a.Subject, a.Webhook, a.Message}
			if m, ok := byKey[k]; ok {
				m.Playbooks = append(m.Playbooks, o.pb.Name)
				m.Mode = killswitch.Loosest(m.Mode, o.pb.Mode)
				continue
			}
			m := a
			m.Mode = o.pb.Mode
			m.Playbooks = []string{o.pb.Name}
			byKey[k] = &m
		}
	}
	for _, m := range byKey {
		sort.Strings(m.Playbooks)
		merged.Actions = append(merged.Actions, *m)
	}
	sort.Slice(merged.Actions, func(i, j int) bool { return actionLess(merged.Actions[i], merged.Actions[j]) })
	if len(merged.Actions) > e.maxTargets {
		return e.escalate(res, in, EscalationTooManyTargets, []string{
			fmt.Sprintf("the merged decision has %d actions, more than the bound of %d", len(merged.Actions), e.maxTargets),
		})
	}
	if len(outcomes) == 0 {
		merged.Reason = "no playbook matched"
	} else {
		merged.Reason = strings.Join(reasons, "; ")
	}
	res.Decision = merged
	return res
}

// checkTargets checks the credentials an action names against the vendor inventory.
// A destructive action must name a credential of the inventory whose kind it applies to,
// else it is an error; one against a protected credential, or on a silence detection, is
// dropped and recorded.
func checkTargets(pb Playbook, acts []Action, in Input) (kept []Action, dropped []Dropped, errs []error) {
	kept = make([]Action, 0, len(acts))
	for _, a := range acts {
		if !a.Type.Destructive() {
			kept = append(kept, a)
			continue
		}
		cv, ok := in.Vendor.Credentials[a.Credential]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%w: %s: credential %q is not in the inventory of vendor %q", ErrMalformed, a.Type, a.Credential, in.Vendor.Name))
		case cv.Action != a.Type:
			errs = append(errs, fmt.Errorf("%w: %s does not apply to credential %q of kind %s (use %s)", ErrMalformed, a.Type, a.Credential, cv.Kind, cv.Action))
		case cv.Protected:
			dropped = append(dropped, Dropped{Action: a, Playbook: pb.Name, Reason: "protected credentials are never targets"})
		case in.Detection.Detector == detectors.KindSilence:
			dropped = append(dropped, Dropped{Action: a, Playbook: pb.Name, Reason: "silence is an alert, never a revocation"})
		default:
			kept = append(kept, a)
		}
	}
	return kept, dropped, errs
}

// escalate replaces the decision by an escalation: one notify action and approval
// required, never a destructive action.
func (e *Engine) escalate(res Result, in Input, reason EscalationReason, errs []string) Result {
	res.Escalated = true
	res.Escalation = reason
	res.Errors = errs
	res.Matched = []string{}
	res.Dropped = nil
	detail := strings.Join(errs, "; ")
	who := in.Detection.Vendor
	if in.Detection.Credential != "" {
		who += "/" + in.Detection.Credential
	}
	msg := fmt.Sprintf("Killswitch: the playbooks could not decide on %s detection %s for %s (%s): %s. Nothing was revoked; a human must decide.",
		in.Detection.Detector, in.Detection.ID, who, reason, detail)
	res.Decision = Decision{
		Actions:          []Action{{Type: killswitch.ActionNotify, Message: truncate(msg, maxMessageLen), Mode: killswitch.ModeEnforce}},
		RequiresApproval: true,
		Reason:           truncate("escalated ("+string(reason)+"): "+detail, maxReasonLen),
		Severity:         maxSeverity("high", string(in.Detection.Severity)),
	}
	return res
}

// classify maps an evaluation error to an escalation reason. parent is the caller's
// context, ectx the one carrying the evaluation deadline.
func classify(parent, ectx context.Context, err error) EscalationReason {
	if topdown.IsCancel(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if parent.Err() != nil {
			return EscalationCanceled
		}
		if ectx.Err() != nil {
			return EscalationTimeout
		}
	}
	var te *topdown.Error
	if errors.As(err, &te) && te.Code == topdown.BuiltinErr {
		return EscalationBuiltinError
	}
	return EscalationEvalError
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func typeRank(t killswitch.ActionType) int {
	for i, k := range killswitch.ActionTypes {
		if k == t {
			return i
		}
	}
	return len(killswitch.ActionTypes)
}

func actionLess(a, b Action) bool {
	if ra, rb := typeRank(a.Type), typeRank(b.Type); ra != rb {
		return ra < rb
	}
	for _, p := range [][2]string{{a.Credential, b.Credential}, {a.Subject, b.Subject}, {a.Webhook, b.Webhook}, {a.Message, b.Message}} {
		if p[0] != p[1] {
			return p[0] < p[1]
		}
	}
	return false
}
