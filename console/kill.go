package console

import (
	"net/http"
	"slices"
	"strings"

	"github.com/killswitch-dev/killswitch/pipeline"
)

// killsView is the kills page: the kill orders, the vendors that can be cut off, the
// false-positive holds, and the plan asked for (?plan=VENDOR).
type killsView struct {
	Orders  []pipeline.KillOrder
	Vendors []string
	Holds   []pipeline.Hold
	// Plan is the plan of the vendor asked for, shown before anything runs.
	Plan      *pipeline.KillPlan
	PlanError string
}

func (killsView) title() string { return "Kill a vendor" }

func (c *Console) killsPage(w http.ResponseWriter, r *http.Request) {
	k := c.cfg.Killer
	orders, err := k.Orders(r.Context())
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := killsView{Orders: orders, Vendors: c.cfg.Vendors}
	if v.Holds, err = k.Holds(r.Context(), c.cfg.Clock.Now()); err != nil {
		c.fail(w, r, err)
		return
	}
	vendor := r.URL.Query().Get("plan")
	if vendor != "" && slices.Contains(c.cfg.Vendors, vendor) && whoFrom(r.Context()).user.Role.Allows(approver) {
		// Planning reads Vault: the approver role, as GET /api/vendors/{vendor}/kill-plan.
		p, err := k.Plan(r.Context(), vendor)
		if err != nil {
			v.PlanError = err.Error()
		} else {
			v.Plan = &p
		}
	}
	c.render(w, r, http.StatusOK, "kills", v)
}

// kill orders the kill of the path's vendor as the logged-in user (admin).
func (c *Console) kill(w http.ResponseWriter, r *http.Request) {
	reason := limit(r.PostFormValue("reason"), 500)
	if reason == "" {
		http.Error(w, "a reason is required", http.StatusBadRequest)
		return
	}
	o, err := c.cfg.Killer.Order(r.Context(), r.PathValue("vendor"), whoFrom(r.Context()).user.Name, reason)
	if err != nil && o.ID == "" {
		c.fail(w, r, err)
		return
	}
	c.done(w, r, "kill order "+o.ID+": "+string(o.State))
}

// killDecide approves or rejects the path's kill order as the logged-in user (admin).
func (c *Console) killDecide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who := whoFrom(r.Context()).user.Name
		var o pipeline.KillOrder
		var err error
		if approve {
			o, err = c.cfg.Killer.Approve(r.Context(), r.PathValue("id"), who)
		} else {
			o, err = c.cfg.Killer.Reject(r.Context(), r.PathValue("id"), who, limit(r.PostFormValue("reason"), 500))
		}
		if err != nil && (o.ID == "" || !strings.Contains(err.Error(), "incomplete")) && o.State != pipeline.KillIncomplete {
			c.fail(w, r, err)
			return
		}
		c.done(w, r, "kill order "+o.ID+": "+string(o.State))
	}
}

// restoredView is the page shown once after a restore: the steps, and the wrapping
// tokens of the re-issued credentials — shown only here, never stored.
type restoredView struct {
	R     pipeline.Restoration
	Error string
}

func (restoredView) title() string { return "Restored" }

// restore restores the path's incident after a false positive (admin) and shows the
// result page (the wrapping tokens are shown once).
func (c *Console) restore(w http.ResponseWriter, r *http.Request) {
	reason := limit(r.PostFormValue("reason"), 500)
	if reason == "" {
		http.Error(w, "a reason is required", http.StatusBadRequest)
		return
	}
	res, err := c.cfg.Killer.Restore(r.Context(), r.PathValue("id"), whoFrom(r.Context()).user.Name, reason)
	if err != nil && res.Incident == "" {
		c.fail(w, r, err)
		return
	}
	v := restoredView{R: res}
	if err != nil {
		v.Error = err.Error()
	}
	c.render(w, r, http.StatusOK, "restored", v)
}
