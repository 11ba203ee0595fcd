// Package httpapi serves the service's HTTP interface on loopback by default: health
// and readiness, Prometheus metrics, the incidents and their timelines, approvals of
// held actions, and the global pause (the kill switch for the kill switch).
//
// Everything but /healthz and /readyz requires a named user's bearer token, and each
// route a role: viewer (incidents, approvals, status, metrics), approver (approve, reject,
// veto), admin
// (pause, resume, breaker reset, kill-vendor and its approval, restore). No token, or an unknown one, is answered 401; a role
// too low, 403 naming the role needed. Who approved, rejected, paused or resumed is the
// authenticated user, never a name from the request body: an "approver" or "who" field
// that names someone else is refused (400).
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/users"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Errors a Controller or IncidentReader wraps so the API answers with the right status.
var (
	// ErrNotFound: no such incident or action (404).
	ErrNotFound = errors.New("not found")
	// ErrExpired: the held action's approval window has passed (410).
	ErrExpired = errors.New("expired")
	// ErrConflict: the action was already approved, rejected or run (409).
	ErrConflict = errors.New("conflict")
	// ErrBadRequest: the request is malformed (400).
	ErrBadRequest = errors.New("bad request")
)

// IncidentReader reads incidents.
type IncidentReader interface {
	// Incidents lists incidents, newest first.
	Incidents(ctx context.Context) ([]*incidents.Incident, error)
	// Incident returns one incident with its timeline.
	Incident(ctx context.Context, id string) (*incidents.Incident, error)
}

// Status is what GET /api/status answers.
type Status struct {
	Paused       bool      `json:"paused"`
	PausedBy     string    `json:"paused_by,omitempty"`
	PausedAt     time.Time `json:"paused_at,omitzero"`
	BreakerOpen  bool      `json:"breaker_open"`
	Mode         string    `json:"mode"`
	DryRunReason string    `json:"dry_run_reason,omitempty"`
	// Ledger is the audit ledger's integrity.
	Ledger *LedgerStatus `json:"ledger,omitempty"`
	// Storm is the detection storm on, if any: the vendors whose destructive actions
	// are held, until when, and the held actions.
	Storm *Storm `json:"storm,omitempty"`
	// VaultTokenScope is "scoped" when the Vault token can do exactly what the
	// inventory's policy grants, "broad (allowed by --allow-broad-vault-token)"
	// otherwise; empty in dry-run.
	VaultTokenScope string `json:"vault_token_scope,omitempty"`
	// Cluster is set when several instances share the fleet: who answered, and the
	// members with the partitions each owns.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
	// Fleet is the detectors' view of fleet-wide shifts.
	Fleet *FleetStatus `json:"fleet,omitempty"`
}

// FleetStatus is the detectors' fleet-wide shift state as GET /api/status shows it: most
// vendors moving together is one observation, not one incident per vendor.
type FleetStatus struct {
	// Shifts counts the fleet-wide shifts observed.
	Shifts uint64 `json:"shifts"`
	// Shifting is true while a shift is on; the fields below describe it.
	Shifting bool `json:"shifting"`
	// Since is the start of the interval in which it was first seen.
	Since time.Time `json:"since,omitzero"`
	// Factor is the common factor (above 1 a rise, below 1 a dip).
	Factor float64 `json:"factor,omitempty"`
	// VendorsMoved of VendorsTotal measured vendors moved with it when first seen.
	VendorsMoved int `json:"vendors_moved,omitempty"`
	VendorsTotal int `json:"vendors_total,omitempty"`
	// Discount is the factor the spike and sustained detectors discount now (1: none).
	Discount float64 `json:"discount"`
}

// ClusterStatus is the membership as GET /api/status reports it.
type ClusterStatus struct {
	// Instance is the member name of the instance answering.
	Instance   string `json:"instance"`
	Partitions int    `json:"partitions"`
	// Members are the instances in the group or heartbeating, as the one answering
	// sees them.
	Members []ClusterMember `json:"members"`
}

// ClusterMember is one instance of a cluster.
type ClusterMember struct {
	Member     string `json:"member"`
	Self       bool   `json:"self,omitempty"`
	HTTP       string `json:"http,omitempty"`
	Alive      bool   `json:"alive"`
	SilentMS   int64  `json:"silent_ms"`
	Partitions []int  `json:"partitions"`
}

// Storm is a detection storm's hold as GET /api/status shows it.
type Storm struct {
	Vendors []string  `json:"vendors"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason,omitempty"`
	// Held lists the IDs of the actions the storm holds for approval.
	Held []string `json:"held"`
}

// LedgerStatus is the ledger's integrity as GET /api/status reports it.
type LedgerStatus struct {
	// Integrity is "ok", or "degraded" while some break is not sealed.
	Integrity string `json:"integrity"`
	// HeadSeq is the last good record's sequence.
	HeadSeq uint64 `json:"head_seq"`
	// BreaksSeen counts the breaks this process found, sealed or not.
	BreaksSeen uint64 `json:"breaks_seen"`
	// Unsealed lists the unsealed breaks (bounded); UnsealedMore counts the others.
	Unsealed     []ledger.Break `json:"unsealed,omitempty"`
	UnsealedMore uint64         `json:"unsealed_more,omitempty"`
	// Appends is "ok", or "failing" while the latest entry this instance tried to store
	// failed: FailingSince is when the first of those failed, FailedAppends counts them
	// and LastFailure is the latest one's error.
	Appends       string    `json:"appends"`
	FailingSince  time.Time `json:"failing_since,omitzero"`
	FailedAppends uint64    `json:"failed_appends,omitempty"`
	LastFailure   string    `json:"last_failure,omitempty"`
}

// ErrDegraded is wrapped by a Config.Ready error that leaves the service ready but
// degraded: /readyz answers 200 with status "degraded: …".
var ErrDegraded = errors.New("degraded")

// Controller carries out operators' requests. Every call is recorded in the ledger by
// the implementation. approver and who are always the authenticated user's name.
type Controller interface {
	// Approve runs a held action once.
	Approve(ctx context.Context, actionID, approver, comment string) error
	// Reject drops a held action.
	Reject(ctx context.Context, actionID, approver, comment string) error
	// Pause stops all automation until Resume.
	Pause(ctx context.Context, who, reason string) error
	// Resume restarts automation.
	Resume(ctx context.Context, who string) error
	// ResetBreaker closes the revocation budget's circuit breaker.
	ResetBreaker(ctx context.Context, who string) error
	// Status reports the global switches.
	Status(ctx context.Context) (Status, error)
}

// PendingAction is one action waiting on people, as GET /api/approvals lists it: a held
// action waiting for an approval, or one announced in a veto window.
type PendingAction struct {
	ID         string `json:"id"`
	Incident   string `json:"incident"`
	Vendor     string `json:"vendor"`
	Credential string `json:"credential,omitempty"`
	Type       string `json:"type"`
	Target     string `json:"target"`
	// State is pending or failed (approvals: a failed one may be approved again), or
	// veto_window.
	State string `json:"state"`
	// Guard is what held it (veto_window for a veto window), Reason why.
	Guard  string `json:"guard"`
	Reason string `json:"reason"`
	// Since is when it was held or announced. Deadline is when an approval window closes
	// (nothing runs after it) or when a veto window ends (the action runs then), and
	// RemainingSeconds the time left until it, as of Pending.Now.
	Since            time.Time `json:"since"`
	Deadline         time.Time `json:"deadline"`
	RemainingSeconds float64   `json:"remaining_seconds"`
	// VetoWindow is the decision's veto window ("1m30s"), for a veto window.
	VetoWindow string `json:"veto_window,omitempty"`
	// LastError is why a failed approved action failed.
	LastError string `json:"last_error,omitempty"`
}

// Pending is what GET /api/approvals answers: the held actions waiting for an approval
// and the running veto windows, each soonest deadline first (never null).
type Pending struct {
	Now         time.Time       `json:"now"`
	Approvals   []PendingAction `json:"approvals"`
	VetoWindows []PendingAction `json:"veto_windows"`
}

// Approvals lists the actions waiting on people and vetoes announced ones. Every veto is
// recorded in the ledger by the implementation; who is the authenticated user's name.
type Approvals interface {
	// Pending lists the held actions waiting for an approval and the running veto windows.
	Pending(ctx context.Context) (Pending, error)
	// Veto cancels an action announced in a veto window before it runs.
	Veto(ctx context.Context, actionID, who, comment string) error
}

// Authenticator tells who holds a bearer token (users.Store is one).
type Authenticator interface {
	// Authenticate returns the token's user; an error wrapping users.ErrUnauthenticated
	// is answered 401, users.ErrUnavailable 503, anything else 500.
	Authenticate(ctx context.Context, token string) (users.User, error)
}

// Config configures the server.
type Config struct {
	// Users authenticates the bearer tokens. Required.
	Users Authenticator
	// Ready reports whether the service can do its job; nil means ready.
	Ready func(ctx context.Context) error
	// Gatherer is what /metrics serves.
	Gatherer prometheus.Gatherer
	// Incidents and Controller back the API.
	Incidents  IncidentReader
	Controller Controller
	// Approvals backs GET /api/approvals and POST /api/actions/{id}/veto; nil answers
	// them 501.
	Approvals Approvals
	// Killer backs kill-vendor, the kill orders, restore and the false-positive holds;
	// nil answers them 501.
	Killer Killer
	// Log receives request errors (never the token).
	Log *zap.Logger
}

// ErrNoUsers is returned by New when no Authenticator is configured.
var ErrNoUsers = errors.New("httpapi: an authenticator of API users is required")

// Route is one authenticated route and the role it needs.
type Route struct {
	// Method and Pattern are as http.ServeMux reads them.
	Method, Pattern string
	// Role is the lowest role allowed.
	Role users.Role
}

// Routes lists every authenticated route with the role it needs (/healthz and /readyz
// need none).
func Routes() []Route {
	return []Route{
		{"GET", "/metrics", users.Viewer},
		{"GET", "/api/incidents", users.Viewer},
		{"GET", "/api/incidents/{id}", users.Viewer},
		{"GET", "/api/status", users.Viewer},
		{"GET", "/api/approvals", users.Viewer},
		{"POST", "/api/actions/{id}/approve", users.Approver},
		{"POST", "/api/actions/{id}/reject", users.Approver},
		{"POST", "/api/actions/{id}/veto", users.Approver},
		{"POST", "/api/pause", users.Admin},
		{"POST", "/api/resume", users.Admin},
		{"POST", "/api/breaker/reset", users.Admin},
		{"GET", "/api/vendors/{vendor}/kill-plan", users.Approver},
		{"POST", "/api/vendors/{vendor}/kill", users.Admin},
		{"GET", "/api/kills", users.Viewer},
		{"GET", "/api/kills/{id}", users.Viewer},
		{"POST", "/api/kills/{id}/approve", users.Admin},
		{"POST", "/api/kills/{id}/reject", users.Admin},
		{"POST", "/api/incidents/{id}/restore", users.Admin},
		{"GET", "/api/holds", users.Viewer},
	}
}

// New returns the HTTP handler.
func New(cfg Config) (http.Handler, error) {
	if cfg.Users == nil {
		return nil, ErrNoUsers
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	s := &server{cfg: cfg}
	handlers := map[string]http.Handler{
		"GET /metrics":                   promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}),
		"GET /api/incidents":             http.HandlerFunc(s.listIncidents),
		"GET /api/incidents/{id}":        http.HandlerFunc(s.getIncident),
		"GET /api/status":                http.HandlerFunc(s.status),
		"POST /api/actions/{id}/approve": http.HandlerFunc(s.decide(cfg.Controller.Approve)),
		"POST /api/actions/{id}/reject":  http.HandlerFunc(s.decide(cfg.Controller.Reject)),
		"GET /api/approvals":             http.HandlerFunc(s.pending),
		"POST /api/actions/{id}/veto":    http.HandlerFunc(s.decide(s.veto)),
		"POST /api/pause":                http.HandlerFunc(s.pause),
		"POST /api/resume":               http.HandlerFunc(s.control(cfg.Controller.Resume)),
		"POST /api/breaker/reset":        http.HandlerFunc(s.control(cfg.Controller.ResetBreaker)),
	}
	maps.Copy(handlers, s.killRoutes())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /readyz", s.ready)
	for _, rt := range Routes() {
		pattern := rt.Method + " " + rt.Pattern
		h, ok := handlers[pattern]
		if !ok {
			return nil, fmt.Errorf("httpapi: no handler for %s", pattern) // a programming error
		}
		mux.Handle(pattern, s.auth(rt.Role, h))
	}
	return mux, nil
}

type server struct {
	cfg Config
}

// userKey is the request context's key of the authenticated user.
type userKey struct{}

// UserFrom returns the authenticated user of a request's context.
func UserFrom(ctx context.Context) (users.User, bool) {
	u, ok := ctx.Value(userKey{}).(users.User)
	return u, ok
}

// auth authenticates the bearer token and checks the user's role against need.
func (s *server) auth(need users.Role, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			unauthorized(w)
			return
		}
		u, err := s.cfg.Users.Authenticate(r.Context(), tok)
		switch {
		case errors.Is(err, users.ErrUnauthenticated):
			unauthorized(w)
			return
		case errors.Is(err, users.ErrUnavailable):
			s.cfg.Log.Error("api: cannot authenticate", zap.Error(err)) // the error never holds the token
			writeJSON(w, http.StatusServiceUnavailable, errBody("API users unavailable: see the service's log"))
			return
		case err != nil:
			s.fail(w, err)
			return
		}
		if !u.Role.Allows(need) {
			s.cfg.Log.Info("api: forbidden", zap.String("user", u.Name), zap.String("role", string(u.Role)),
				zap.String("need", string(need)), zap.String("method", r.Method), zap.String("path", r.URL.Path))
			writeJSON(w, http.StatusForbidden, map[string]string{
				"error": fmt.Sprintf("forbidden: %s %s needs the %s role; %s has the %s role", r.Method, r.URL.Path, need, u.Name, u.Role),
				"need":  string(need), "role": string(u.Role), "user": u.Name,
			})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, u)))
	})
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="killswitch"`)
	writeJSON(w, http.StatusUnauthorized, errBody("missing or wrong bearer token"))
}

// actor returns the authenticated user's name, refusing a body that names someone else
// (field is "approver" or "who"; empty means not given).
func actor(r *http.Request, field, named string) (string, error) {
	u, ok := UserFrom(r.Context())
	if !ok {
		return "", errors.New("httpapi: no authenticated user") // auth wraps every route that calls this
	}
	if named = strings.TrimSpace(named); named != "" && named != u.Name {
		return "", fmt.Errorf("%w: %s %q is not the authenticated user %q: it is always the token's user; leave the field out",
			ErrBadRequest, field, named, u.Name)
	}
	return u.Name, nil
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(r.Context()); errors.Is(err, ErrDegraded) {
			writeJSON(w, 200, map[string]string{"status": err.Error()})
			return
		} else if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

// listIncidents answers GET /api/incidents?state=open&vendor=v&limit=n.
func (s *server) listIncidents(w http.ResponseWriter, r *http.Request) {
	all, err := s.cfg.Incidents.Incidents(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.fail(w, fmt.Errorf("%w: limit must be 1..1000", ErrBadRequest))
			return
		}
		limit = n
	}
	out := slices.DeleteFunc(slices.Clone(all), func(in *incidents.Incident) bool {
		return (q.Get("state") != "" && string(in.State) != q.Get("state")) ||
			(q.Get("vendor") != "" && in.Vendor != q.Get("vendor"))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	if out == nil {
		out = []*incidents.Incident{}
	}
	writeJSON(w, 200, map[string]any{"incidents": out, "count": len(out)})
}

// errNoApprovals answers the approvals routes when no Approvals is configured.
var errNoApprovals = errors.New("httpapi: approvals and veto windows are not available here")

// pending answers GET /api/approvals.
func (s *server) pending(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Approvals == nil {
		writeJSON(w, http.StatusNotImplemented, errBody(errNoApprovals.Error()))
		return
	}
	p, err := s.cfg.Approvals.Pending(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	if p.Approvals == nil {
		p.Approvals = []PendingAction{}
	}
	if p.VetoWindows == nil {
		p.VetoWindows = []PendingAction{}
	}
	writeJSON(w, 200, p)
}

// veto is POST /api/actions/{id}/veto behind decide (the vetoer is the authenticated user).
func (s *server) veto(ctx context.Context, id, who, comment string) error {
	if s.cfg.Approvals == nil {
		return errNoApprovals
	}
	return s.cfg.Approvals.Veto(ctx, id, who, comment)
}

func (s *server) getIncident(w http.ResponseWriter, r *http.Request) {
	in, err := s.cfg.Incidents.Incident(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, 200, in)
}

// decisionRequest is the body of approve and reject. Approver is optional: the approver
// is the authenticated user, and a different name is refused.
type decisionRequest struct {
	Approver string `json:"approver"`
	Comment  string `json:"comment"`
}

func (s *server) decide(f func(ctx context.Context, id, approver, comment string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req decisionRequest
		if err := decodeBody(r, &req); err != nil {
			s.fail(w, err)
			return
		}
		approver, err := actor(r, "approver", req.Approver)
		if err != nil {
			s.fail(w, err)
			return
		}
		if err := f(r.Context(), r.PathValue("id"), approver, req.Comment); err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ok", "action": r.PathValue("id")})
	}
}

// controlRequest is the body of pause, resume and breaker reset. Who is optional: it is
// the authenticated user, and a different name is refused.
type controlRequest struct {
	Who    string `json:"who"`
	Reason string `json:"reason"`
}

func (s *server) pause(w http.ResponseWriter, r *http.Request) {
	var req controlRequest
	if err := decodeBody(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	who, err := actor(r, "who", req.Who)
	if err != nil {
		s.fail(w, err)
		return
	}
	if err := s.cfg.Controller.Pause(r.Context(), who, req.Reason); err != nil {
		s.fail(w, err)
		return
	}
	s.status(w, r)
}

func (s *server) control(f func(ctx context.Context, who string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req controlRequest
		if err := decodeBody(r, &req); err != nil {
			s.fail(w, err)
			return
		}
		who, err := actor(r, "who", req.Who)
		if err != nil {
			s.fail(w, err)
			return
		}
		if err := f(r.Context(), who); err != nil {
			s.fail(w, err)
			return
		}
		s.status(w, r)
	}
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Controller.Status(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, 200, st)
}

func (s *server) fail(w http.ResponseWriter, err error) {
	if m := (*Misdirected)(nil); errors.As(err, &m) {
		writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": err.Error(), "api": m.API})
		return
	}
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, incidents.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrExpired):
		code = http.StatusGone
	case errors.Is(err, ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, ErrBadRequest):
		code = http.StatusBadRequest
	case errors.Is(err, ErrTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, errNoApprovals):
		code = http.StatusNotImplemented
	default:
		s.cfg.Log.Error("api request failed", zap.Error(err))
	}
	writeJSON(w, code, errBody(err.Error()))
}

// MaxBodyBytes bounds a request body; a longer one is answered 413.
const MaxBodyBytes = 64 << 10

// ErrTooLarge is wrapped by the error for a request body over MaxBodyBytes (answered 413).
var ErrTooLarge = errors.New("request body too large")

// decodeBody decodes exactly one JSON object, with no unknown fields and nothing after
// it, from a body of at most MaxBodyBytes.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Anything but white space after the object is refused, not ignored.
		if _, terr := dec.Token(); terr != io.EOF {
			err = errTrailing
			if terr != nil && !isSyntax(terr) {
				err = terr
			}
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return fmt.Errorf("%w: the limit is %d bytes", ErrTooLarge, tooBig.Limit)
	default:
		return fmt.Errorf("%w: body: %w", ErrBadRequest, err)
	}
}

var errTrailing = errors.New("data after the JSON object")

func isSyntax(err error) bool {
	var se *json.SyntaxError
	return errors.As(err, &se)
}

// NewServer returns the HTTP server for h with every timeout set, so that a client that
// sends slowly, or never reads, cannot hold a connection (and a goroutine) open.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
	}
}

func errBody(msg string) map[string]string { return map[string]string{"error": msg} }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to tell it
}
