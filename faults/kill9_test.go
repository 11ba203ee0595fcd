package faults

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/nats-io/nats.go/jetstream"
)

// TestKill9AtEachStep kills the real process with SIGKILL at each step of the action
// path and starts it again on the same data: the stolen token ends revoked exactly once,
// the revocation is verified, and the ledger verifies.
//
//   - claim: the idempotency claim is in the KV bucket (the revocation, if it was
//     already on its way, is held at the proxy and never reaches Vault);
//   - intent: the intent is in the ledger and the revocation request is at Vault's door;
//   - applied: Vault revoked the token, and the process dies before hearing it;
//   - verify: the process is asking Vault for the proof.
func TestKill9AtEachStep(t *testing.T) {
	rounds := 1
	if *long {
		rounds = 3
	}
	for _, step := range []string{"claim", "intent", "applied", "verify"} {
		for round := range rounds {
			t.Run(step, func(t *testing.T) {
				t.Parallel()
				r := newRig(t, "")
				r.ks.Start(t)
				killed := make(chan struct{})
				var once sync.Once
				kill := func() { once.Do(func() { r.ks.Kill9(); close(killed) }) }
				// hold keeps a request at the proxy until the process is dead, then
				// answers 503 (nobody hears it).
				hold := func() int { <-killed; return http.StatusServiceUnavailable }
				switch step {
				case "claim":
					stop := watchClaims(t, r.ks, kill)
					defer stop()
					r.proxy.Set(revokePath, testharness.VaultHook{Before: func(int) int { return hold() }})
				case "intent":
					r.proxy.Set(revokePath, testharness.VaultHook{Before: func(int) int { kill(); return hold() }})
				case "applied":
					r.proxy.Set(revokePath, testharness.VaultHook{After: func(_, status int) {
						if status/100 == 2 {
							kill()
						}
					}})
				case "verify":
					r.proxy.Set(lookupPath, testharness.VaultHook{Before: func(int) int {
						if r.proxy.Succeeded(revokePath) == 0 {
							return 0 // a plan's lookup, before the revocation
						}
						kill()
						return hold()
					}})
				}
				r.publish(append(normal(20), breach())...)
				select {
				case <-killed:
				case <-time.After(45 * time.Second):
					t.Fatalf("the process never reached the %s step\n%s", step, r.ks.Log())
				}
				r.proxy.Set(revokePath, testharness.VaultHook{})
				r.proxy.Set(lookupPath, testharness.VaultHook{})
				tokenDiedBeforeRestart := !r.alive()

				r.ks.Start(t)
				r.publish(normal(5)...)
				in := r.waitIncident("contained after the restart", func(in incident) bool { return in.State == "contained" })
				if r.alive() {
					t.Fatal("the stolen token still works")
				}
				if n := r.proxy.Succeeded(revokePath); n != 1 {
					t.Fatalf("Vault revoked the token %d times, want exactly 1", n)
				}
				if n := r.ledgerCount(`"stage":"verified"`, `"type":"vault.revoke_token_accessor"`, in.ID); n != 1 {
					t.Fatalf("%d verified records for the incident, want 1", n)
				}
				out := r.verifyLedger()
				t.Logf("round %d, killed after %s (token dead at the kill: %v): contained, revoked once at Vault (%d revoke requests), %s",
					round+1, step, tokenDiedBeforeRestart, r.proxy.Requests(revokePath), out)
			})
		}
	}
}

// watchClaims calls kill when the first claim appears in the claims bucket.
func watchClaims(t *testing.T, ks *testharness.Killswitch, kill func()) (stop func()) {
	t.Helper()
	nc := ks.Connect(t, "service")
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	var kv jetstream.KeyValue
	var err error
	for {
		if kv, err = js.KeyValue(ctx, actions.ClaimsBucket); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				kill()
				return
			}
		}
	}()
	return func() { cancel(); _ = w.Stop(); nc.Close() }
}
