package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/pipeline"
)

// Killer cuts whole vendors off and restores them after a false positive
// (pipeline.Killer). Who orders, approves, rejects or restores is the authenticated
// user.
type Killer interface {
	Plan(ctx context.Context, vendor string) (pipeline.KillPlan, error)
	Order(ctx context.Context, vendor, by, reason string) (pipeline.KillOrder, error)
	Approve(ctx context.Context, id, by string) (pipeline.KillOrder, error)
	Reject(ctx context.Context, id, by, reason string) (pipeline.KillOrder, error)
	Orders(ctx context.Context) ([]pipeline.KillOrder, error)
	Get(ctx context.Context, id string) (pipeline.KillOrder, uint64, error)
	Restore(ctx context.Context, id, by, reason string) (pipeline.Restoration, error)
	Holds(ctx context.Context, now time.Time) ([]pipeline.Hold, error)
}

// ErrMisdirected is wrapped by a Misdirected error.
var ErrMisdirected = errors.New("another instance owns the vendor")

// Misdirected is the error of a kill or restore sent to an instance of a cluster that
// does not own the vendor: it is answered 421 with the owner's API, where the request
// goes instead (the CLI follows it).
type Misdirected struct {
	Vendor string
	// API is the owner's API base URL.
	API string
}

func (m *Misdirected) Error() string {
	return fmt.Sprintf("%s: in this cluster the instance at %s owns %s: send it there", ErrMisdirected, m.API, m.Vendor)
}

func (m *Misdirected) Unwrap() error { return ErrMisdirected }

// errNoKiller answers the kill routes when no Killer is configured.
var errNoKiller = errors.New("httpapi: kill-vendor and restore are not available here")

// KillResponse is what the kill routes answer: the order as it stands, and the error
// that left it incomplete, if any.
type KillResponse struct {
	pipeline.KillOrder
	Error string `json:"error,omitempty"`
}

// killRequest is the body of kill, reject and restore. Who is optional: it is the
// authenticated user, and a different name is refused.
type killRequest struct {
	Who    string `json:"who"`
	Reason string `json:"reason"`
}

// killRoutes are the kill routes' handlers, by pattern.
func (s *server) killRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /api/vendors/{vendor}/kill-plan": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			p, err := k.Plan(r.Context(), r.PathValue("vendor"))
			if err != nil {
				s.fail(w, killErr(err))
				return
			}
			writeJSON(w, 200, p)
		}),
		"POST /api/vendors/{vendor}/kill": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			who, req, ok := s.killBody(w, r, true)
			if ok {
				s.order(w, r, func(ctx context.Context) (pipeline.KillOrder, error) {
					return k.Order(ctx, r.PathValue("vendor"), who, req.Reason)
				})
			}
		}),
		"GET /api/kills": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			os, err := k.Orders(r.Context())
			if err != nil {
				s.fail(w, killErr(err))
				return
			}
			writeJSON(w, 200, map[string]any{"kills": os})
		}),
		"GET /api/kills/{id}": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			o, _, err := k.Get(r.Context(), r.PathValue("id"))
			if err != nil {
				s.fail(w, killErr(err))
				return
			}
			writeJSON(w, 200, o)
		}),
		"POST /api/kills/{id}/approve": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			who, _, ok := s.killBody(w, r, false)
			if ok {
				s.order(w, r, func(ctx context.Context) (pipeline.KillOrder, error) { return k.Approve(ctx, r.PathValue("id"), who) })
			}
		}),
		"POST /api/kills/{id}/reject": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			who, req, ok := s.killBody(w, r, false)
			if ok {
				s.order(w, r, func(ctx context.Context) (pipeline.KillOrder, error) {
					return k.Reject(ctx, r.PathValue("id"), who, req.Reason)
				})
			}
		}),
		"POST /api/incidents/{id}/restore": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			who, req, ok := s.killBody(w, r, true)
			if !ok {
				return
			}
			res, err := k.Restore(r.Context(), r.PathValue("id"), who, req.Reason)
			if err != nil && res.Incident == "" {
				s.fail(w, killErr(err))
				return
			}
			w.Header().Set("Cache-Control", "no-store") // it holds the wrapping tokens, once
			out := map[string]any{"restoration": res}
			if err != nil {
				out["error"] = err.Error()
			}
			writeJSON(w, 200, out)
		}),
		"GET /api/holds": s.withKiller(func(w http.ResponseWriter, r *http.Request, k Killer) {
			hs, err := k.Holds(r.Context(), time.Now())
			if err != nil {
				s.fail(w, killErr(err))
				return
			}
			writeJSON(w, 200, map[string]any{"holds": hs})
		}),
	}
}

func (s *server) withKiller(f func(http.ResponseWriter, *http.Request, Killer)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Killer == nil {
			writeJSON(w, http.StatusNotImplemented, errBody(errNoKiller.Error()))
			return
		}
		f(w, r, s.cfg.Killer)
	})
}

// killBody decodes a kill request and returns the authenticated user; needReason
// refuses an empty reason (400). ok is false when the answer was written.
func (s *server) killBody(w http.ResponseWriter, r *http.Request, needReason bool) (string, killRequest, bool) {
	var req killRequest
	if err := decodeBody(r, &req); err != nil {
		s.fail(w, err)
		return "", req, false
	}
	who, err := actor(r, "who", req.Who)
	if err == nil && needReason && strings.TrimSpace(req.Reason) == "" {
		err = fmt.Errorf("%w: a reason is required (it goes to the ledger and the incident)", ErrBadRequest)
	}
	if err != nil {
		s.fail(w, err)
		return "", req, false
	}
	return who, req, true
}

// order answers with the order f returns; an order that exists but ran incompletely is
// answered 200 with its error.
func (s *server) order(w http.ResponseWriter, r *http.Request, f func(context.Context) (pipeline.KillOrder, error)) {
	o, err := f(r.Context())
	if err != nil && o.ID == "" {
		s.fail(w, killErr(err))
		return
	}
	resp := KillResponse{KillOrder: o}
	if err != nil {
		if errors.Is(err, pipeline.ErrSameApprover) || errors.Is(err, pipeline.ErrOrderState) || errors.Is(err, pipeline.ErrPaused) {
			s.fail(w, killErr(err))
			return
		}
		resp.Error = err.Error()
	}
	writeJSON(w, 200, resp)
}

// killErr maps the kill errors onto the API's.
func killErr(err error) error {
	switch {
	case errors.Is(err, pipeline.ErrUnknownVendor), errors.Is(err, pipeline.ErrNoOrder):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, pipeline.ErrSameApprover), errors.Is(err, pipeline.ErrOrderState), errors.Is(err, pipeline.ErrPaused),
		errors.Is(err, pipeline.ErrNothingToRestore):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, pipeline.ErrNoReviver):
		return fmt.Errorf("%w: %w", errNoApprovals, err)
	}
	return err
}
