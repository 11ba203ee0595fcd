package service_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/incidents"
	incnatskv "github.com/killswitch-dev/killswitch/incidents/natskv"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// clusterRig is a 3-node in-process NATS cluster running the authorization of a data
// directory, with a sensor publishing to it and an operator reading it.
type clusterRig struct {
	c        *embeddednats.Cluster
	dataDir  string
	sensor   jetstream.JetStream
	operator jetstream.JetStream
	acked    atomic.Int64 // telemetry events the cluster acknowledged
	down     atomic.Bool  // a node is stopped
	ackedOne atomic.Int64 // … of which while a node was stopped
}

func newClusterRig(t testing.TB) *clusterRig {
	t.Helper()
	dir := t.TempDir()
	auth, sensorCreds := testharness.NATSAuth(t, dir)
	r := &clusterRig{c: testharness.NATSCluster(t, 3, auth), dataDir: dir}
	for _, id := range []struct {
		name, creds string
		js          *jetstream.JetStream
	}{
		{"test-sensor", sensorCreds, &r.sensor},
		{"test-operator", embeddednats.CredsFile(dir, embeddednats.RoleOperator), &r.operator},
	} {
		nc, err := natsconn.Options{URL: r.c.URL(), CredsFile: id.creds, Name: id.name}.Connect(zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		if *id.js, err = jetstream.New(nc); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// publish publishes e as a sensor until the cluster acknowledges it (the content
// message ID makes a retry during a failover store it once) and returns its stream
// sequence.
func (r *clusterRig) publish(t testing.TB, e telemetry.Event) uint64 {
	ctx := context.Background()
	body := telemetry.AppendJSON(nil, &e)
	id := telnats.ContentMsgID(&e)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		ack, err := r.sensor.Publish(pctx, "egress."+e.Vendor, body, jetstream.WithMsgID(id))
		cancel()
		if err == nil { // a duplicate: stored by an attempt whose acknowledgement was lost
			r.acked.Add(1)
			if r.down.Load() {
				r.ackedOne.Add(1)
			}
			return ack.Sequence
		}
		if time.Now().After(deadline) {
			t.Errorf("publish: not acknowledged within 30s: %v", err)
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quiet is an event far below every cap: background telemetry.
func quiet() telemetry.Event {
	return telemetry.Event{Time: time.Now().UTC(), Vendor: "quiet", Credential: "quiet-api", Dst: "203.0.113.9", DstPort: 443,
		Bytes: 1, Records: 1, Sensor: "gw-1"}
}

// consumer reads the service's telemetry consumer, retrying while the cluster moves it.
func (r *clusterRig) consumer(t testing.TB) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		c, err := r.operator.Consumer(ctx, telnats.DefaultStream, telnats.DefaultDurable)
		cancel()
		if err == nil {
			return c.CachedInfo()
		}
		if time.Now().After(deadline) {
			t.Fatalf("telemetry consumer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processed waits until the service has processed (acknowledged, after the detectors)
// the telemetry up to seq, and returns when that was seen.
func (r *clusterRig) processed(t testing.TB, seq uint64) time.Time {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r.consumer(t).AckFloor.Stream >= seq {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("telemetry up to %d not processed within 30s", seq)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lastSeq is the telemetry stream's last sequence.
func (r *clusterRig) lastSeq(t testing.TB) uint64 {
	t.Helper()
	st, err := r.operator.Stream(context.Background(), telnats.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.LastSeq
}

// streams lists every stream (buckets and object stores are streams too) with its
// configuration and cluster state.
func (r *clusterRig) streams(t testing.TB) []*jetstream.StreamInfo {
	t.Helper()
	var all []*jetstream.StreamInfo
	l := r.operator.ListStreams(context.Background())
	for si := range l.Info() {
		all = append(all, si)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return all
}

// waitCaughtUp waits until every replica of every stream is current.
func (r *clusterRig) waitCaughtUp(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var lagging []string
		for _, si := range r.streams(t) {
			ok := si.Cluster != nil && si.Cluster.Leader != "" && len(si.Cluster.Replicas) == 2
			if ok {
				for _, p := range si.Cluster.Replicas {
					ok = ok && p.Current && !p.Offline && p.Lag == 0
				}
			}
			if !ok {
				lagging = append(lagging, si.Config.Name)
			}
		}
		if len(lagging) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas not caught up after 30s: %v", lagging)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventsProcessed reads killswitch_events_total (events the detectors saw).
func eventsProcessed(t testing.TB, s *running) float64 {
	t.Helper()
	code, b := s.api(t, http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "killswitch_events_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// contained says whether vendor has a contained incident. While a NATS node is down the
// API may answer 503/500 for a moment (JetStream electing leaders): not yet.
func contained(t testing.TB, s *running, vendor string) func() bool {
	return func() bool {
		code, b := s.api(t, http.MethodGet, "/api/incidents?limit=1000", "")
		if code != http.StatusOK {
			t.Logf("GET /api/incidents during a failover: %d %s (asked again)", code, bytes.TrimSpace(b))
			return false
		}
		var out struct {
			Incidents []incidents.Incident `json:"incidents"`
		}
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		for _, in := range out.Incidents {
			if in.Vendor == vendor && in.State == incidents.StateContained {
				return true
			}
		}
		return false
	}
}

// Killswitch on a 3-node NATS cluster with service.nats.replicas: 3 (every stream,
// bucket and object store R3), connected with the data directory's service identity
// to all three URLs. A breach is revoked through the real Vault; then nodes fail one
// at a time — the one the service is connected to, the telemetry stream's leader, the
// meta leader — while a sensor keeps publishing: the service reconnects and goes on, a
// second breach on another vendor is revoked during the first failover, every
// acknowledged event is processed by the detectors, the restarted node catches up, and
// `killswitch ledger verify` passes against the cluster with the operator identity.
// It logs the time from a node's failure to the first event published after it being
// processed (p50 over the trials).
func TestServiceOnNATSCluster(t *testing.T) {
	rig := newVaultRig(t, "mailer", "crm", "quiet")
	r := newClusterRig(t)
	cfg := capConfig(rig.inv) + fmt.Sprintf("service:\n  nats: {url: %q, replicas: 3}\n", r.c.URL())
	s := start(t, options{cfg: cfg, dataDir: r.dataDir, execs: rig.execs})

	streams := r.streams(t)
	var names []string
	for _, si := range streams {
		names = append(names, si.Config.Name)
		if si.Config.Replicas != 3 {
			t.Errorf("stream %s has %d replicas, want 3", si.Config.Name, si.Config.Replicas)
		}
	}
	slices.Sort(names)
	for _, want := range []string{telnats.DefaultStream, telnats.DefaultDeadLetterStream, "KILLSWITCH_LEDGER", "KILLSWITCH_LEDGER_CHECKPOINTS",
		"KV_" + incnatskv.Bucket, "KV_" + actions.ClaimsBucket} {
		if !slices.Contains(names, want) {
			t.Errorf("no stream %s among %v", want, names)
		}
	}
	if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "OBJ_") }) {
		t.Errorf("no object store among %v", names)
	}
	t.Logf("R3: %v", names)

	ctx := context.Background()
	crossingAt := r.publish(t, crossing("mailer", "mailer-api"))
	waitFor(t, "mailer contained", contained(t, s, "mailer"))
	if rig.alive(t, "mailer") {
		t.Fatal("mailer's stolen token still works")
	}
	r.processed(t, crossingAt)

	// Sensors publish all along, except from just before a node is stopped until the
	// first event published after it is processed: that figure is measured with
	// nothing in flight (see the README on messages in flight).
	var wg sync.WaitGroup
	var gate sync.RWMutex
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				gate.RLock()
				r.publish(t, quiet())
				gate.RUnlock()
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	var figures []time.Duration
	for trial, victim := range []string{"service's node", "telemetry stream leader", "meta leader", "service's node", "service's node"} {
		i := r.c.ClientNode("killswitch")
		switch victim {
		case "telemetry stream leader":
			i = r.c.StreamLeader(telnats.DefaultStream)
		case "meta leader":
			i = r.c.MetaLeader()
		}
		if i < 0 {
			t.Fatalf("trial %d: no %s", trial+1, victim)
		}
		roles := []string{}
		for _, x := range []struct {
			role string
			is   bool
		}{{"service's node", r.c.ClientNode("killswitch") == i}, {"telemetry leader", r.c.StreamLeader(telnats.DefaultStream) == i},
			{"meta leader", r.c.MetaLeader() == i}} {
			if x.is {
				roles = append(roles, x.role)
			}
		}
		gate.Lock()
		r.processed(t, r.lastSeq(t))
		r.down.Store(true)
		r.c.Stop(i)
		killed := time.Now()
		seq := r.publish(t, quiet())
		took := r.processed(t, seq).Sub(killed)
		gate.Unlock()
		figures = append(figures, took)
		waitFor(t, "the service on another node", func() bool { n := r.c.ClientNode("killswitch"); return n >= 0 && n != i })
		t.Logf("trial %d: %s stopped (%s: %s); first event after it processed in %s; the service is on %s", trial+1, r.c.Name(i), victim,
			strings.Join(roles, ", "), took.Round(time.Millisecond), r.c.Name(r.c.ClientNode("killswitch")))
		if trial == 0 { // the service goes on: a second breach, on another vendor, during the failover
			r.publish(t, crossing("crm", "crm-api"))
			waitFor(t, "crm contained with a node down", contained(t, s, "crm"))
			if rig.alive(t, "crm") {
				t.Fatal("crm's stolen token still works")
			}
		}
		if err := r.c.Start(ctx, i); err != nil {
			t.Fatal(err)
		}
		r.down.Store(false)
		r.waitCaughtUp(t)
	}
	close(stop)
	wg.Wait()

	// Nothing lost: every acknowledged event is in the stream, processed, and seen by
	// the detectors.
	stream, err := r.operator.Stream(ctx, telnats.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	state := stream.CachedInfo().State
	acked := uint64(r.acked.Load())
	if state.Msgs != acked {
		t.Fatalf("telemetry stream holds %d events, the cluster acknowledged %d", state.Msgs, acked)
	}
	r.processed(t, state.LastSeq)
	if ci := r.consumer(t); ci.NumPending != 0 || ci.NumAckPending != 0 {
		t.Fatalf("telemetry consumer: %d pending, %d unacknowledged", ci.NumPending, ci.NumAckPending)
	}
	var seen float64
	waitFor(t, "the detectors to count every event", func() bool {
		seen = eventsProcessed(t, s)
		return seen >= float64(acked)
	})
	t.Logf("%d events acknowledged by the cluster (%d while a node was down), %d processed by the detectors (redeliveries counted again)",
		acked, r.ackedOne.Load(), int(seen))

	slices.Sort(figures)
	t.Logf("node failure → first event processed: p50 %s, max %s over %d trials", figures[len(figures)/2].Round(time.Millisecond),
		figures[len(figures)-1].Round(time.Millisecond), len(figures))

	env := []string{"KILLSWITCH_NATS_URL="}
	code, out, errOut := testharness.Run(t, env, "ledger", "verify", "--nats", r.c.URL(), "--data-dir", r.dataDir)
	if code != 0 {
		t.Fatalf("ledger verify against the cluster: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("ledger verify: %s", strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]))
}
