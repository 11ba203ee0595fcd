package service

import (
	"context"
	"fmt"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/pipeline"
)

// vaultKill returns kill-vendor's enumeration and restore on client.
func vaultKill(client *vaultapi.Client, fp actions.Fingerprinter) (pipeline.Enumerator, pipeline.Reviver) {
	k := vaultTools{client: client, fp: fp}
	return k, k
}

// vaultTools adapts actions/vault's enumeration and restore primitives to the pipeline.
type vaultTools struct {
	client *vaultapi.Client
	fp     actions.Fingerprinter
}

// Enumerate implements pipeline.Enumerator.
func (k vaultTools) Enumerate(ctx context.Context, vendor string, v killswitch.Vendor) (map[string]killswitch.Credential, error) {
	return vault.Enumerate(ctx, k.client, vendor, v, k.fp)
}

// Revive implements pipeline.Reviver.
func (k vaultTools) Revive(ctx context.Context, incident string, c killswitch.Credential, t killswitch.ActionType, ttl time.Duration) (pipeline.Revival, error) {
	var (
		st  vault.Step
		err error
		out = incidents.RestoreReissued
	)
	switch t {
	case killswitch.ActionDisableEntity:
		st, err = vault.EnableEntity(ctx, k.client, k.fp, c.Entity, c.Accessor)
		out = incidents.RestoreReversed
	case killswitch.ActionQuarantinePolicy:
		st, err = vault.RestorePolicy(ctx, k.client, c.Policy)
		out = incidents.RestoreReversed
	case killswitch.ActionDestroySecretID:
		st, err = vault.ReissueSecretID(ctx, k.client, k.fp, killswitch.AppRoleRef{Mount: c.Mount, Role: c.Role}, incident, ttl)
	case killswitch.ActionRotateKV:
		st, err = vault.ReissueKV(ctx, k.client, k.fp, killswitch.KVRef{Mount: c.Mount, Path: c.Path}, incident, ttl)
	default:
		return pipeline.Revival{}, fmt.Errorf("restore: %s cannot be reversed or re-issued", t)
	}
	if err != nil {
		return pipeline.Revival{}, err
	}
	rv := pipeline.Revival{Outcome: out, Evidence: st.What + ": " + st.Evidence}
	if h := st.Handover; h != nil {
		rv.WrapToken, rv.WrapAccessor, rv.WrapExpiresAt = h.Token, h.Accessor, h.Expires
	}
	return rv, nil
}
