package faults

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
)

// TestAppliedButNeverVerified: Vault accepts the revocation, then keeps answering that
// the token is alive. The action ends unverified (never "contained"), a human is paged
// on the vendor's notification subject, the outcome is counted, and the ledger says so.
func TestAppliedButNeverVerified(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)
	r.proxy.Set(lookupPath, testharness.VaultHook{Before: func(int) int {
		if r.proxy.Succeeded(revokePath) > 0 {
			return http.StatusOK // "the token still resolves"
		}
		return 0
	}})
	nc := r.ks.Connect(t, "service")
	defer nc.Close()
	pages, err := nc.SubscribeSync("killswitch.notify.mailer")
	if err != nil {
		t.Fatal(err)
	}
	r.publish(append(normal(20), breach())...)
	in := r.waitIncident("with an unverified revocation", func(in incident) bool {
		for _, a := range in.Actions {
			if a.Type == "vault.revoke_token_accessor" && a.Status == "unverified" {
				return true
			}
		}
		return false
	})
	if in.State == "contained" {
		t.Fatalf("an unverified revocation contained the incident: %+v", in)
	}
	var paged bool
	for deadline := time.Now().Add(10 * time.Second); !paged && time.Now().Before(deadline); {
		m, err := pages.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		paged = bytes.Contains(m.Data, []byte(`"page":true`)) && bytes.Contains(m.Data, []byte(`unverified`))
	}
	if !paged {
		t.Fatal("nobody was paged about the unverified revocation")
	}
	_, metrics := r.api(http.MethodGet, "/metrics", "")
	if !bytes.Contains(metrics, []byte(`killswitch_actions_total{status="unverified",type="vault.revoke_token_accessor"} 1`)) {
		t.Fatalf("the unverified outcome is not counted:\n%s", grepLines(string(metrics), "killswitch_actions_total"))
	}
	if n := r.ledgerCount(`"stage":"unverified"`, in.ID); n != 1 {
		t.Fatalf("%d unverified records in the ledger, want 1", n)
	}
	t.Logf("Vault revoked (%d lookups answered 'alive'): the action is unverified, the incident %s, paged, counted, recorded; %s",
		r.proxy.Requests(lookupPath), in.State, r.verifyLedger())
}
