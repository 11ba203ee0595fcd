package embeddednats_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// A three-node cluster with JWT auth: the data directory's credentials work on every
// node and the anonymous client on none; an R3 stream keeps every acknowledged message
// while its leader (then another node) is stopped, and a restarted node catches up.
func TestClusterAuthAndNodeFailure(t *testing.T) {
	dir := t.TempDir()
	auth, sensorCreds := testharness.NATSAuth(t, dir)
	ctx := context.Background()
	begin := time.Now()
	c, err := embeddednats.StartCluster(ctx, embeddednats.ClusterOptions{Dir: filepath.Join(dir, "nats"), Auth: auth, ReadyTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	t.Logf("3-node cluster ready (meta leader %s) in %s", c.Name(c.MetaLeader()), time.Since(begin).Round(time.Millisecond))
	if c.Len() != 3 || len(c.URLs()) != 3 {
		t.Fatalf("cluster of %d nodes, %d URLs", c.Len(), len(c.URLs()))
	}

	for _, tc := range []struct {
		name, creds string
		ok          bool
	}{
		{"service", embeddednats.CredsFile(dir, embeddednats.RoleService), true},
		{"operator", embeddednats.CredsFile(dir, embeddednats.RoleOperator), true},
		{"sensor", sensorCreds, true},
		{"anonymous", "", false},
	} {
		for i, u := range c.URLs() {
			t.Run(fmt.Sprintf("%s on node %d", tc.name, i+1), func(t *testing.T) {
				nc, err := natsconn.Options{URL: u, CredsFile: tc.creds}.Connect(zap.NewNop())
				if tc.ok != (err == nil) {
					t.Fatalf("connect: %v, want ok=%v", err, tc.ok)
				}
				if nc != nil {
					nc.Close()
				}
			})
		}
	}

	svc, err := natsconn.Options{URL: c.URL(), CredsFile: embeddednats.CredsFile(dir, embeddednats.RoleService), Name: "svc"}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if err := natsconn.Check(ctx, svc, []string{"egress.check"}, 5*time.Second); err != nil {
		t.Fatalf("identity check against the cluster: %v", err)
	}
	js, err := jetstream.New(svc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EGRESS", Subjects: []string{"egress.>"}, Storage: jetstream.FileStorage, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	pub, err := natsconn.Options{URL: c.URL(), CredsFile: sensorCreds, Name: "gw-1"}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	pjs, err := jetstream.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	publish := func(n int) {
		t.Helper()
		for range n {
			id := fmt.Sprintf("m-%d", acked)
			for attempt := 0; ; attempt++ {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				_, err := pjs.Publish(pctx, "egress.mailer", []byte(id), jetstream.WithMsgID(id))
				cancel()
				if err == nil {
					break
				}
				if attempt > 30 {
					t.Fatalf("publish %s: %v", id, err)
				}
			}
			acked++
		}
	}
	publish(50)
	for _, victim := range []string{"stream leader", "sensor's node"} {
		i := c.StreamLeader("EGRESS")
		if victim == "sensor's node" {
			i = c.ClientNode("gw-1")
		}
		if i < 0 {
			t.Fatalf("no %s", victim)
		}
		c.Stop(i)
		stopped := time.Now()
		publish(1)
		t.Logf("%s (%s) stopped: first message acknowledged after %s", victim, c.Name(i), time.Since(stopped).Round(time.Millisecond))
		publish(49)
		if err := c.Start(ctx, i); err != nil {
			t.Fatal(err)
		}
		waitCurrent(t, js, "EGRESS")
	}
	info, err := js.Stream(ctx, "EGRESS")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().State.Msgs; got != uint64(acked) {
		t.Fatalf("stream holds %d messages, %d were acknowledged", got, acked)
	}
	if err := c.Start(ctx, 0); err == nil {
		t.Fatal("Start of a running node succeeded")
	}
}

// waitCurrent waits until every replica of stream is current (the restarted node has
// caught up).
func waitCurrent(t *testing.T, js jetstream.JetStream, stream string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := js.Stream(context.Background(), stream)
		if err == nil {
			ci := st.CachedInfo().Cluster
			ok := ci != nil && ci.Leader != "" && len(ci.Replicas) == 2
			for _, r := range ci.Replicas {
				ok = ok && r.Current && !r.Offline && r.Lag == 0
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: replicas not current after 30s (%v)", stream, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
