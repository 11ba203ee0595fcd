package faults

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// long selects the long form of the suite (scripts/faults).
var long = flag.Bool("faults.long", false, "run the long form of the fault suite")

const apiToken = "fault-suite-api-token-0123456789"

// Vault API paths the suite acts on.
const (
	revokePath = "/v1/auth/token/revoke-accessor"
	lookupPath = "/v1/auth/token/lookup-accessor"
)

// rig is one killswitch process guarding one vendor token in the real dev Vault,
// through a fault proxy.
type rig struct {
	t      *testing.T
	vault  *testharness.Vault
	proxy  *testharness.VaultProxy
	ks     *testharness.Killswitch
	stolen string // the vendor's token, which the attacker holds
	cred   string // the guarded credential's name in telemetry
}

// newRig seeds a vendor token and the service's token in a fresh dev Vault and
// prepares (does not start) a killswitch guarding it through a fault proxy. extra is
// appended to the configuration.
func newRig(t *testing.T, extra string) *rig {
	t.Helper()
	ctx := context.Background()
	v := testharness.DevVault(t)
	root := v.Client(t)
	sec, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	svc := serviceToken(t, root, killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
		"mailer-api": {Kind: killswitch.CredTokenAccessor, Accessor: sec.Auth.Accessor}}}})
	p := testharness.NewVaultProxy(t, v.Addr)
	cfg := fmt.Sprintf(`
service:
  nats: {listen: "{{nats}}"}
vendors:
  mailer:
    caps: [{credential: mailer-api, bytes: 100MB, per: 1h}]
    credentials:
      mailer-api: {kind: token, accessor: %s}
%s`, sec.Auth.Accessor, extra)
	ks := testharness.NewKillswitch(t, cfg, "VAULT_ADDR="+p.URL, "VAULT_TOKEN="+svc, "KILLSWITCH_API_TOKEN="+apiToken)
	return &rig{t: t, vault: v, proxy: p, ks: ks, stolen: sec.Auth.ClientToken, cred: "mailer-api"}
}

// serviceToken writes the policy `killswitch vault policy` generates for inv and returns
// a token holding only it: what the service runs with.
func serviceToken(t *testing.T, root *api.Client, inv killswitch.Inventory) string {
	t.Helper()
	ctx := context.Background()
	policy, err := vault.PolicyFor(inv)
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "killswitch", policy); err != nil {
		t.Fatal(err)
	}
	svc, err := root.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"killswitch"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Auth.ClientToken
}

// alive reports whether the stolen token still works (asked of Vault directly).
func (r *rig) alive() bool {
	c, err := api.NewClient(&api.Config{Address: r.vault.Addr})
	if err != nil {
		r.t.Fatal(err)
	}
	c.SetToken(r.stolen)
	_, err = c.Auth().Token().LookupSelf()
	return err == nil
}

// publish sends events to the service's telemetry subject, as a sensor.
func (r *rig) publish(evs ...telemetry.Event) {
	r.t.Helper()
	nc := r.ks.Connect(r.t, "sensor")
	defer nc.Close()
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{MsgID: telnats.ContentMsgID})
	if err != nil {
		r.t.Fatal(err)
	}
	for i := range evs {
		if err := pub.Publish(context.Background(), &evs[i]); err != nil {
			r.t.Fatal(err)
		}
	}
}

// api calls the service's HTTP API.
func (r *rig) api(method, path, body string) (int, []byte) {
	r.t.Helper()
	req, _ := http.NewRequest(method, r.ks.HTTPURL()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// incident is what the suite reads of an incident from the API.
type incident struct {
	ID         string `json:"id"`
	Credential string `json:"credential"`
	State      string `json:"state"`
	Actions    []struct {
		ID     string `json:"id"`
		Type   string `json:"type"`
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"actions"`
}

// waitIncident waits until an incident of the guarded credential satisfies ok.
func (r *rig) waitIncident(what string, ok func(incident) bool) incident {
	r.t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	var last []byte
	for time.Now().Before(deadline) {
		code, b := r.api(http.MethodGet, "/api/incidents", "")
		last = b
		if code == http.StatusOK {
			var list struct{ Incidents []incident }
			if err := json.Unmarshal(b, &list); err != nil {
				r.t.Fatal(err)
			}
			for _, in := range list.Incidents {
				if in.Credential == r.cred && ok(in) {
					return in
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("no incident %s in 45s; last /api/incidents: %s\n%s", what, last, r.ks.Log())
	return incident{}
}

// ledgerCount counts the ledger messages whose data contains every one of subs, and
// checks the chain with `killswitch ledger verify`.
func (r *rig) ledgerCount(subs ...string) int {
	r.t.Helper()
	nc := r.ks.Connect(r.t, "service")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	n := 0
next:
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(string(m.Data), s) {
				continue next
			}
		}
		n++
	}
	return n
}

// verifyLedger runs `killswitch ledger verify` against the service's NATS.
func (r *rig) verifyLedger() string {
	r.t.Helper()
	code, out, errOut := testharness.Run(r.t, nil, "ledger", "verify", "--nats", r.ks.NATSURL(), "--data-dir", r.ks.DataDir)
	if code != 0 {
		r.t.Fatalf("ledger verify: exit %d\n%s%s", code, out, errOut)
	}
	return strings.TrimSpace(out)
}

// breach is 300 MB through the token in one event: over twice the 100 MB/h cap
// (critical), at the current time.
func breach() telemetry.Event {
	return telemetry.Event{Time: time.Now().UTC(), Vendor: "mailer", Credential: "mailer-api", Dst: "198.51.100.7",
		DstPort: 443, Bytes: 300 << 20, Sensor: "gw-1"}
}

// normal is n events of 1 MB each, ending now.
func normal(n int) []telemetry.Event {
	now := time.Now().UTC()
	out := make([]telemetry.Event, n)
	for i := range out {
		out[i] = telemetry.Event{Time: now.Add(time.Duration(i-n) * time.Millisecond), Vendor: "mailer",
			Credential: "mailer-api", Dst: "198.51.100.7", DstPort: 443, Bytes: 1 << 20, Sensor: "gw-1"}
	}
	return out
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
