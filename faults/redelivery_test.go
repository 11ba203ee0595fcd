package faults

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
)

// TestPauseDuringRedelivery: the process dies with its claim and intent stored and the
// revocation at Vault's door; an operator pauses automation as the service comes back.
// The redelivered action, whose claim exists, is held (on main it ran while paused);
// approved after the resume, it runs once.
func TestPauseDuringRedelivery(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)
	killed := make(chan struct{})
	var once sync.Once
	r.proxy.Set(revokePath, testharness.VaultHook{Before: func(int) int {
		once.Do(func() { r.ks.Kill9(); close(killed) })
		<-killed
		return http.StatusServiceUnavailable
	}})
	r.publish(append(normal(20), breach())...)
	select {
	case <-killed:
	case <-time.After(45 * time.Second):
		t.Fatalf("the revocation never reached Vault\n%s", r.ks.Log())
	}
	r.proxy.Set(revokePath, testharness.VaultHook{})
	r.ks.Start(t)
	if code, b := r.api(http.MethodPost, "/api/pause", `{"reason":"investigating the crash"}`); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, b)
	}
	var held string
	r.waitIncident("with the redelivered revocation held", func(in incident) bool {
		for _, a := range in.Actions {
			if a.Type == "vault.revoke_token_accessor" && a.Status == "held" {
				held = a.ID
				return true
			}
		}
		return false
	})
	if !r.alive() || r.proxy.Succeeded(revokePath) != 0 {
		t.Fatal("a paused service revoked")
	}
	if code, b := r.api(http.MethodPost, "/api/resume", `{}`); code != http.StatusOK {
		t.Fatalf("resume: %d %s", code, b)
	}
	if code, b := r.api(http.MethodPost, "/api/actions/"+held+"/approve", `{}`); code != http.StatusOK {
		t.Fatalf("approve: %d %s", code, b)
	}
	r.waitIncident("contained", func(in incident) bool { return in.State == "contained" })
	if r.alive() || r.proxy.Succeeded(revokePath) != 1 {
		t.Fatalf("after the approval: token alive %v, %d revocations at Vault, want dead and 1", r.alive(), r.proxy.Succeeded(revokePath))
	}
	t.Logf("killed with the revocation at Vault's door, paused on restart: the redelivered action was held; approved after resume: revoked once; %s", r.verifyLedger())
}
