package service_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
)

// A randomized soak of a cluster: three instances (real processes) on a 3-node NATS
// cluster with the real dev Vault, telemetry flowing on every vendor, attacks at random
// moments, and meanwhile instances killed (SIGKILL) and started again, and NATS nodes
// restarted, at random. Afterwards: every acknowledged event was handled (the group's
// work queue sourced the whole telemetry stream and holds nothing), nothing was
// dead-lettered, every attack's credential is verified dead with exactly one incident
// and one revocation, no credential has two incidents, and the ledger verifies.
// KILLSWITCH_SOAK sets the chaos phase's length and turns it on (the seed is logged and
// KILLSWITCH_SOAK_SEED replays one).
func TestSoak(t *testing.T) {
	length, err := time.ParseDuration(os.Getenv("KILLSWITCH_SOAK"))
	if err != nil || length <= 0 {
		// Opt-in: on a loaded CI machine an instance restarted while a NATS node is down
		// can keep failing to create its ledger stream (a start-up fragility noted in
		// the README), which would fail unrelated submissions.
		t.Skip("the soak runs with KILLSWITCH_SOAK=40s (or longer)")
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := fmt.Sscan(os.Getenv("KILLSWITCH_SOAK_SEED"), &seed); err != nil || v != 1 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("soak: %s of chaos, seed %d", length, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	attacks := max(4, int(length/(5*time.Second)))
	var vendors []string
	for i := range attacks {
		vendors = append(vendors, fmt.Sprintf("target%02d", i))
	}
	background := []string{"quiet", "steady", "batch", "crm2", "hr"}
	f := newFleet(t, 3, 8, append(slices.Clone(vendors), background...))
	all := []string{"ks1", "ks2", "ks3"}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range all {
				t.Logf("%s's log (tail, debug lines left out):\n%s", n, tail(notable(f.ks[n].Log()), 80))
			}
		}
	})
	f.settled(t, "ks1", all)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // telemetry on every vendor, attacked ones included (their background keys)
		defer wg.Done()
		names := append(slices.Clone(vendors), background...)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			e := quiet()
			e.Vendor = names[i%len(names)]
			e.Credential = e.Vendor + "-background"
			f.r.publish(t, e)
		}
	}()

	// Attacks spread over the chaos phase; chaos: an instance killed and started again,
	// or a NATS node restarted, every 2–5 s.
	var mu sync.Mutex
	var log []string
	t.Cleanup(func() {
		if t.Failed() { // the chaos so far, to read the instances' logs against
			mu.Lock()
			defer mu.Unlock()
			t.Logf("chaos:\n%s", strings.Join(log, "\n"))
		}
	})
	note := func(format string, a ...any) {
		mu.Lock()
		log = append(log, fmt.Sprintf("%6.1fs ", time.Since(f.started).Seconds())+fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	f.started = time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		arng := rand.New(rand.NewPCG(seed, 2)) // the chaos loop has its own
		for i, v := range vendors {
			// Spaced so that every attack is sent within the chaos phase.
			time.Sleep(time.Duration(float64(length) / float64(attacks) * (0.5 + 0.5*arng.Float64())))
			e := crossing(v, v+"-api")
			f.r.publish(t, e)
			note("attack %d on %s", i+1, v)
		}
	}()
	deadline := time.Now().Add(length)
	kills, nodeRestarts := 0, 0
	for k := 0; time.Now().Before(deadline); k++ {
		time.Sleep(time.Duration(2000+rng.IntN(3000)) * time.Millisecond)
		if k%3 == 1 { // every third fault is a NATS node's
			i := rng.IntN(f.r.c.Len())
			f.r.c.Stop(i)
			note("NATS node %s stopped", f.r.c.Name(i))
			time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
			if err := f.r.c.Start(context.Background(), i); err != nil {
				t.Fatal(err)
			}
			note("NATS node %s started", f.r.c.Name(i))
			nodeRestarts++
			continue
		}
		victim := all[rng.IntN(len(all))]
		f.ks[victim].Kill9()
		note("%s killed", victim)
		time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Millisecond)
		// Started while a NATS node may be down: a start that fails on JetStream being
		// unavailable is tried again, as the instance's supervisor would.
		f.ks[victim].Restarts = 3
		f.ks[victim].Start(t)
		note("%s started", victim)
		kills++
	}
	close(stop)
	wg.Wait()
	for _, l := range log {
		t.Log(l)
	}

	// Settled: every attack contained exactly once.
	f.settled(t, "ks1", all)
	for _, v := range vendors {
		waitFor(t, v+"'s token revoked", func() bool { return !f.vault.alive(t, v) })
	}
	byKey := map[string]int{}
	for _, v := range append(slices.Clone(vendors), background...) {
		var ins []incidents.Incident
		want := 0
		if slices.Contains(vendors, v) {
			want = 1
		}
		waitFor(t, v+"'s incidents settled", func() bool {
			ins = f.incidentsOf(t, "ks1", v)
			return len(ins) == want && (want == 0 || ins[0].State == incidents.StateContained)
		})
		for _, in := range ins {
			byKey[in.Vendor+"/"+in.Credential]++
			revokes := 0
			for _, a := range in.Actions {
				if a.Type == killswitch.ActionRevokeTokenAccessor && a.Status == incidents.ActionVerified {
					revokes++
				}
			}
			if revokes != 1 {
				t.Errorf("%s: %d verified revocations in %s, want 1: %+v", v, revokes, in.ID, in.Actions)
			}
		}
	}
	for k, n := range byKey {
		if n > 1 {
			t.Errorf("%s has %d incidents", k, n)
		}
	}

	// Nothing acknowledged was lost: the work queue sourced the whole telemetry stream
	// and every message was acknowledged by an owner; none was dead-lettered.
	ctx := context.Background()
	var egress, wq uint64
	waitFor(t, "the work queue drained", func() bool {
		es, err1 := f.r.operator.Stream(ctx, telnats.DefaultStream)
		ws, err2 := f.r.operator.Stream(ctx, telnats.DefaultStream+"-"+telnats.DefaultGroup)
		if err1 != nil || err2 != nil {
			return false
		}
		egress, wq = es.CachedInfo().State.LastSeq, ws.CachedInfo().State.LastSeq
		return wq == egress && ws.CachedInfo().State.Msgs == 0
	})
	if dl, err := f.r.operator.Stream(ctx, telnats.DefaultDeadLetterStream); err == nil && dl.CachedInfo().State.Msgs != 0 {
		t.Errorf("%d telemetry messages dead-lettered", dl.CachedInfo().State.Msgs)
	}
	if uint64(f.r.acked.Load()) != egress {
		t.Errorf("the cluster acknowledged %d events, the telemetry stream holds %d", f.r.acked.Load(), egress)
	}
	code, out, errOut := testharness.Run(t, []string{"KILLSWITCH_NATS_URL="}, "ledger", "verify", "--nats", f.r.c.URL(), "--data-dir", f.r.dataDir)
	if code != 0 {
		t.Fatalf("ledger verify: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("soak: %d events acknowledged and handled, %d attacks each revoked once, %d instance kills, %d NATS node restarts, ledger verified",
		egress, len(vendors), kills, nodeRestarts)
}

// tail returns the last n lines of s.
// notable is log without its debug lines (one telemetry batch each, which would fill
// any tail).
func notable(log string) string {
	var b strings.Builder
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `"level":"debug"`) {
			b.WriteString(line)
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	lines := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			lines++
			if lines > n {
				return s[i+1:]
			}
		}
	}
	return s
}
