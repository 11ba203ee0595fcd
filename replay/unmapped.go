package replay

import (
	"context"
	"slices"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// UnmappedKind is the kind an unmapped credential takes in the plan: the playbooks see it
// as a Vault token revoked by its accessor, the most common kind of vendor credential.
const UnmappedKind = killswitch.CredTokenAccessor

// unmappedAccessorPrefix starts the placeholder accessor of an unmapped credential. No
// Vault accessor looks like it, and it only ever reaches a plan-only actor.
const unmappedAccessorPrefix = "unmapped:"

// UnmappedTarget is the target the report gives an action on an unmapped credential.
func UnmappedTarget(vendor, credential string) string {
	return "unmapped: add " + vendor + "/" + credential + " to the inventory to revoke it for real"
}

// unmapped makes the credentials seen in the telemetry that the inventory does not list
// revocable in a replay's plan (Options.Unmapped). The playbooks see each as a credential
// of UnmappedKind; the plan-only actor gets an inventory entry with a placeholder
// accessor; the report marks every action on one unmapped. The inventory itself is never
// changed, so nothing of this reaches the detectors or anything outside the replay.
type unmapped struct {
	inv      killswitch.Inventory
	seen     map[detectors.Key]struct{}
	byVendor map[string][]string // unlisted credentials seen, per vendor, sorted
	actions  map[string]detectors.Key
}

func newUnmapped(inv killswitch.Inventory) *unmapped {
	return &unmapped{inv: inv, seen: map[detectors.Key]struct{}{}, byVendor: map[string][]string{}, actions: map[string]detectors.Key{}}
}

// listed reports whether the inventory lists the credential.
func (u *unmapped) listed(vendor, credential string) bool {
	_, ok := u.inv[vendor].Credentials[credential]
	return ok
}

// seeKey records the key of an event (the charts' onNew); vendor keys are ignored.
func (u *unmapped) seeKey(k detectors.Key) { u.see(k.Vendor, k.Credential) }

// see records a credential seen in the telemetry (or named by a detection).
func (u *unmapped) see(vendor, credential string) {
	if credential == "" {
		return
	}
	k := detectors.Key{Vendor: vendor, Credential: credential}
	if _, ok := u.seen[k]; ok {
		return
	}
	u.seen[k] = struct{}{}
	if u.listed(vendor, credential) {
		return
	}
	creds := u.byVendor[vendor]
	i, _ := slices.BinarySearch(creds, credential)
	u.byVendor[vendor] = slices.Insert(creds, i, credential)
}

// isUnmapped reports whether the plan treats the credential as unmapped.
func (u *unmapped) isUnmapped(vendor, credential string) bool {
	if credential == "" || u.listed(vendor, credential) {
		return false
	}
	_, ok := u.seen[detectors.Key{Vendor: vendor, Credential: credential}]
	return ok
}

// view adds the vendor's unmapped credentials to the playbooks' view of it.
func (u *unmapped) view(v playbooks.VendorView) playbooks.VendorView {
	creds := u.byVendor[v.Name]
	if len(creds) == 0 {
		return v
	}
	out := v
	out.Credentials = make(map[string]playbooks.CredentialView, len(v.Credentials)+len(creds))
	for n, c := range v.Credentials {
		out.Credentials[n] = c
	}
	for _, n := range creds {
		out.Credentials[n] = playbooks.CredentialView{Kind: UnmappedKind, Action: UnmappedKind.Action()}
	}
	return out
}

// vendor returns the inventory entry the plan-only actor resolves the decision's targets
// in: the vendor's entry (or an empty one) with an entry of UnmappedKind and a placeholder
// accessor for every unmapped credential a destructive action names.
func (u *unmapped) vendor(name string, v *killswitch.Vendor, acts []playbooks.Action) *killswitch.Vendor {
	var out *killswitch.Vendor
	for _, a := range acts {
		if !a.Type.Destructive() || !u.isUnmapped(name, a.Credential) {
			continue
		}
		if out == nil {
			out = &killswitch.Vendor{}
			if v != nil {
				*out = *v
			}
			creds := make(map[string]killswitch.Credential, len(out.Credentials)+1)
			for n, c := range out.Credentials {
				creds[n] = c
			}
			out.Credentials = creds
		}
		out.Credentials[a.Credential] = killswitch.Credential{Kind: UnmappedKind, Accessor: unmappedAccessorPrefix + name + "/" + a.Credential}
	}
	if out == nil {
		return v
	}
	return out
}

// unmappedDecider shows the playbooks the unmapped credentials of the detection's vendor.
type unmappedDecider struct {
	next pipeline.Decider
	u    *unmapped
}

// Evaluate implements pipeline.Decider.
func (d unmappedDecider) Evaluate(ctx context.Context, in playbooks.Input, opts ...playbooks.EvalOption) playbooks.Result {
	d.u.see(in.Detection.Vendor, in.Detection.Credential)
	in.Vendor = d.u.view(in.Vendor)
	return d.next.Evaluate(ctx, in, opts...)
}

// unmappedActor resolves actions on unmapped credentials for the plan-only actor and
// remembers them, so the report marks them.
type unmappedActor struct {
	next pipeline.Actor
	u    *unmapped
}

// Act implements pipeline.Actor.
func (a unmappedActor) Act(ctx context.Context, req actions.Request) ([]incidents.ActionRef, error) {
	req.Vendor = a.u.vendor(req.Incident.Vendor, req.Vendor, req.Result.Decision.Actions)
	refs, err := a.next.Act(ctx, req)
	for _, ref := range refs {
		if ref.Type.Destructive() && a.u.isUnmapped(req.Incident.Vendor, ref.Credential) {
			a.u.actions[ref.ID] = detectors.Key{Vendor: req.Incident.Vendor, Credential: ref.Credential}
		}
	}
	return refs, err
}

// Budget implements pipeline.Actor.
func (a unmappedActor) Budget(ctx context.Context) playbooks.Budget { return a.next.Budget(ctx) }

// unmappedAction returns the credential of an action on an unmapped credential.
func (u *unmapped) unmappedAction(id string) (detectors.Key, bool) {
	if u == nil {
		return detectors.Key{}, false
	}
	k, ok := u.actions[id]
	return k, ok
}

// mark rewrites the report's actions on unmapped credentials and counts them in the
// summary: the distinct unmapped credentials the plan targets, and the contained
// incidents whose containment rests only on unmapped credentials.
func (u *unmapped) mark(rep *Report, all []*incidents.Incident) {
	targeted := map[detectors.Key]struct{}{}
	for i, in := range all {
		inc := &rep.Incidents[i]
		mapped := false
		for j, a := range in.Actions {
			k, ok := u.unmappedAction(a.ID)
			if !ok {
				if a.Type.Destructive() && containing(a.Status) {
					mapped = true
				}
				continue
			}
			targeted[k] = struct{}{}
			inc.Actions[j].Unmapped = true
			inc.Actions[j].Target = UnmappedTarget(k.Vendor, k.Credential)
		}
		if inc.ContainedAt != nil && !mapped && slices.ContainsFunc(inc.Actions, func(a Action) bool { return a.Unmapped }) {
			rep.Summary.ContainedUnmapped++
		}
	}
	rep.Summary.UnmappedCredentials = len(targeted)
	for k := range targeted {
		rep.unmapped = append(rep.unmapped, k.Vendor+"/"+k.Credential)
	}
	slices.Sort(rep.unmapped)
}

// containing reports whether an action in this status contains an incident (planned
// counts: a replay with a mapped planned revocation is not contained by the unmapped one).
func containing(s incidents.ActionStatus) bool {
	switch s {
	case incidents.ActionPlanned, incidents.ActionApplied, incidents.ActionUnverified, incidents.ActionVerified:
		return true
	}
	return false
}
