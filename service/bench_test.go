package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkBreachToRevocation measures, through the whole service wiring, the time from
// a crossing telemetry event published to JetStream (file storage, sync always) to the
// verified revocation of the credential at the real dev Vault: ingest, detection stored
// in the detections stream, the responder, the playbooks, the guard rails (claims,
// budgets, cooldowns in JetStream KV; the ledger on its stream) and Vault's
// revoke-accessor and lookup. One breach at a time; p50 and p99 in milliseconds.
//
//	go test -run '^$' -bench BreachToRevocation -benchtime 300x ./service/
func BenchmarkBreachToRevocation(b *testing.B) { benchRevocation(b, false) }

// BenchmarkSlowVendorDoesNotBlock is BreachToRevocation while another vendor's Vault
// calls hang (its executor talks to a Vault that accepts connections and never
// answers): that vendor's revocation is in flight for the whole run, and every other
// vendor's must not wait for it.
//
//	go test -run '^$' -bench SlowVendorDoesNotBlock -benchtime 300x ./service/
func BenchmarkSlowVendorDoesNotBlock(b *testing.B) { benchRevocation(b, true) }

func benchRevocation(b *testing.B, slowVendor bool) {
	names := []string{"warmup"}
	for i := range b.N {
		names = append(names, fmt.Sprintf("v%05d", i))
	}
	if slowVendor {
		names = append(names, "slow")
	}
	rig := newVaultRig(b, names...)
	execs := rig.execs
	slowCalled := make(chan struct{})
	if slowVendor {
		execs = byVendor(rig.execs, hungVault(b), "slow", slowCalled)
	}
	cfg := capConfig(rig.inv) + "incidents: {storm: {vendors: -1}}\n"
	cfg = strings.Replace(cfg, "budget: 1000,", fmt.Sprintf("budget: %d,", 10*len(names)), 1)
	s := start(b, options{cfg: cfg, execs: execs})
	verified := make(chan incidents.ActionRef, 16)
	sub, err := s.nc.Subscribe("killswitch.events.action.>", func(m *nats.Msg) {
		var ref incidents.ActionRef
		if json.Unmarshal(m.Data, &ref) == nil && ref.Type.Destructive() && ref.Status == incidents.ActionVerified {
			verified <- ref
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, err := jetstream.New(s.nc)
	if err != nil {
		b.Fatal(err)
	}
	breach := func(vendor string) time.Duration {
		ev := crossing(vendor, vendor+"-api")
		data, err := json.Marshal(ev)
		if err != nil {
			b.Fatal(err)
		}
		began := time.Now()
		if _, err := js.Publish(context.Background(), "egress."+vendor, data); err != nil {
			b.Fatal(err)
		}
		for {
			select {
			case ref := <-verified:
				if ref.Credential == vendor+"-api" {
					return ref.At.Sub(began)
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("%s: no verified revocation within 30s", vendor)
			}
		}
	}
	breach("warmup") // first evaluation, first connections
	if slowVendor {
		if _, err := js.Publish(context.Background(), "egress.slow", mustJSON(b, crossing("slow", "slow-api"))); err != nil {
			b.Fatal(err)
		}
		select {
		case <-slowCalled:
		case <-time.After(30 * time.Second):
			b.Fatal("the slow vendor's revocation never reached its Vault")
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		lat = append(lat, breach(names[i+1]))
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
	if slowVendor {
		for _, in := range s.incidents(b) {
			if in.Vendor == "slow" && in.State == incidents.StateContained {
				b.Fatal("the slow vendor was contained: its Vault did not hang for the whole run")
			}
		}
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// hungVault returns Vault executors whose calls hang: their Vault accepts connections
// and never answers, until the benchmark ends.
func hungVault(tb testing.TB) actions.Registry {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	client, err := api.NewClient(&api.Config{Address: "http://" + ln.Addr().String(), Timeout: time.Minute})
	if err != nil {
		tb.Fatal(err)
	}
	client.SetToken("hung")
	return vault.New(client)
}

// byVendor routes the actions on vendor to slow (telling called when one starts) and
// every other vendor's to fast.
func byVendor(fast, slow actions.Registry, vendor string, called chan struct{}) actions.Registry {
	var once sync.Once
	out := actions.Registry{}
	for t, e := range fast {
		out[t] = routed{fast: e, slow: slow[t], vendor: vendor, called: func() { once.Do(func() { close(called) }) }}
	}
	return out
}

type routed struct {
	fast, slow actions.Executor
	vendor     string
	called     func()
}

func (r routed) pick(t actions.Target) actions.Executor {
	if t.Vendor == r.vendor {
		r.called()
		return r.slow
	}
	return r.fast
}

func (r routed) Plan(ctx context.Context, t actions.Target) (actions.Plan, error) {
	return r.pick(t).Plan(ctx, t)
}

func (r routed) Apply(ctx context.Context, t actions.Target) (actions.Outcome, error) {
	return r.pick(t).Apply(ctx, t)
}

func (r routed) Verify(ctx context.Context, t actions.Target) (actions.Verification, error) {
	return r.pick(t).Verify(ctx, t)
}
