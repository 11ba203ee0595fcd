package faults

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go/jetstream"
)

// TestLedgerPoisonAndForgery: garbage published on the ledger's subject, and a record
// correctly linked to the head but made without the service's key, stop nothing: the
// breach that follows is revoked and recorded; readiness stays 200 and says
// "degraded: ledger integrity"; the status lists the breaks; `ledger verify` lists
// every one and fails; a restart starts; after an operator's `ledger seal`, verify
// passes and lists them as sealed.
func TestLedgerPoisonAndForgery(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)
	// Two records to link to: an operator's pause and resume.
	for _, c := range []string{`/api/pause`, `/api/resume`} {
		if code, b := r.api(http.MethodPost, c, `{"reason":"drill"}`); code != http.StatusOK {
			t.Fatalf("%s: %d %s", c, code, b)
		}
	}
	r.waitLedger(2)

	nc := r.ks.Connect(t, "service")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.Publish(ctx, "killswitch.ledger", []byte("not a record {")); err != nil {
		t.Fatal(err)
	}
	// The forger reads the head and links a record to it, with a key of their own.
	st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		t.Fatal(err)
	}
	var head ledger.Record
	info, _ := st.Info(ctx)
	for seq := info.State.LastSeq; seq > 0; seq-- {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if head, err = ledger.DecodeRecord(m.Data); err == nil {
			break
		}
	}
	fake := make([]byte, 32)
	_, _ = rand.Read(fake)
	key, err := ledger.NewKey(fake)
	if err != nil {
		t.Fatal(err)
	}
	forged := ledger.LinkSigned(ledger.Entry{Type: ledger.TypeControl, ID: "pause/forged", Time: time.Now().UTC(),
		Payload: json.RawMessage(`{"switch":"pause","on":false,"by":"eve"}`)}, head.Seq, head.Hash, key)
	b, _ := json.Marshal(forged)
	if _, err := js.Publish(ctx, "killswitch.ledger", b); err != nil {
		t.Fatal(err)
	}

	r.publish(append(normal(20), breach())...)
	in := r.waitIncident("contained despite the poisoned ledger", func(in incident) bool { return in.State == "contained" })
	if n := r.ledgerCount(`"stage":"verified"`, `"type":"vault.revoke_token_accessor"`, in.ID); n != 1 {
		r.dumpLedger()
		t.Fatalf("%d verified records after the poison, want 1", n)
	}
	code, body := r.api(http.MethodGet, "/readyz", "")
	if code != http.StatusOK || !strings.Contains(string(body), "degraded: ledger integrity") {
		t.Fatalf("/readyz with a poisoned ledger: %d %s", code, body)
	}
	var status struct {
		Ledger struct {
			Integrity string            `json:"integrity"`
			Unsealed  []json.RawMessage `json:"unsealed"`
		} `json:"ledger"`
	}
	if code, body = r.api(http.MethodGet, "/api/status", ""); code != http.StatusOK || json.Unmarshal(body, &status) != nil ||
		status.Ledger.Integrity != "degraded" || len(status.Ledger.Unsealed) < 2 {
		t.Fatalf("/api/status with a poisoned ledger: %d %s", code, body)
	}
	env := []string(nil)
	vcode, vout, _ := testharness.Run(t, env, "ledger", "verify", "--nats", r.ks.NATSURL(), "--data-dir", r.ks.DataDir)
	if vcode == 0 || strings.Count(vout, "\n") < 2 {
		t.Fatalf("ledger verify on a poisoned chain: exit %d\n%s", vcode, vout)
	}

	if err := r.ks.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	r.ks.Start(t) // someone else's garbage never keeps it from starting
	scode, sout, serr := testharness.Run(t, env, "ledger", "seal", "--by", "ana", "--reason", "fault suite: garbage and a forged record",
		"--nats", r.ks.NATSURL(), "--data-dir", r.ks.DataDir)
	if scode != 0 {
		t.Fatalf("ledger seal: exit %d\n%s%s", scode, sout, serr)
	}
	after := r.verifyLedger()
	t.Logf("garbage + a forged linked record: breach still revoked, /readyz 200 degraded, %d unsealed breaks in /api/status; verify exit %d:\n%s\nafter the seal: %s",
		len(status.Ledger.Unsealed), vcode, strings.TrimSpace(vout), after)
}

// waitLedger waits until the ledger holds at least n messages.
func (r *rig) waitLedger(n uint64) {
	r.t.Helper()
	nc := r.ks.Connect(r.t, "service")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err := js.Stream(context.Background(), "KILLSWITCH_LEDGER"); err == nil {
			if info, err := st.Info(context.Background()); err == nil && info.State.Msgs >= n {
				return
			}
		}
	}
	r.t.Fatalf("the ledger did not reach %d messages", n)
}

func (r *rig) dumpLedger() {
	nc := r.ks.Connect(r.t, "service")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, _ := js.Stream(context.Background(), "KILLSWITCH_LEDGER")
	info, _ := st.Info(context.Background())
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err == nil {
			r.t.Logf("%d %s %.300s", seq, m.Header.Get("Nats-Msg-Id"), m.Data)
		}
	}
}
