package faults

import (
	"net/http"
	"testing"

	"github.com/killswitch-dev/killswitch/internal/testharness"
)

// TestApprovalDuringVaultOutage: a revocation held (automation paused) is approved
// while Vault answers 503 to every revocation. The approval is accepted and stays
// approved; nothing is marked done; when Vault comes back the next tick retries it and
// the token dies, once.
func TestApprovalDuringVaultOutage(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)
	if code, b := r.api(http.MethodPost, "/api/pause", `{"reason":"drill"}`); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, b)
	}
	r.publish(append(normal(20), breach())...)
	var held string
	r.waitIncident("with a held revocation", func(in incident) bool {
		for _, a := range in.Actions {
			if a.Type == "vault.revoke_token_accessor" && a.Status == "held" {
				held = a.ID
				return true
			}
		}
		return false
	})
	if code, b := r.api(http.MethodPost, "/api/resume", `{}`); code != http.StatusOK {
		t.Fatalf("resume: %d %s", code, b)
	}
	r.proxy.Set(revokePath, testharness.VaultHook{Before: func(int) int { return http.StatusServiceUnavailable }})
	code, b := r.api(http.MethodPost, "/api/actions/"+held+"/approve", `{"comment":"confirmed"}`)
	if code != http.StatusOK && code != http.StatusServiceUnavailable && code != http.StatusInternalServerError {
		t.Fatalf("approve during the outage: %d %s", code, b)
	}
	if !r.alive() {
		t.Fatal("the token died during the outage")
	}
	outage := r.proxy.Requests(revokePath)
	if code, b := r.api(http.MethodPost, "/api/actions/"+held+"/approve", `{}`); code != http.StatusConflict {
		t.Fatalf("a second approval of an approved action: %d %s, want 409 (it stays approved)", code, b)
	}
	r.proxy.Set(revokePath, testharness.VaultHook{}) // Vault is back
	r.waitIncident("contained once Vault is back", func(in incident) bool { return in.State == "contained" })
	if r.alive() {
		t.Fatal("the stolen token still works")
	}
	if n := r.proxy.Succeeded(revokePath); n != 1 {
		t.Fatalf("Vault revoked %d times, want 1", n)
	}
	t.Logf("approval answered %d during the outage (%d revocation attempts refused by Vault); retried when Vault came back: contained, revoked once; %s",
		code, outage, r.verifyLedger())
}
