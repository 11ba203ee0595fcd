package cluster_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/pipeline/cluster"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"
)

// Escalations at different instances make one storm: the instance whose escalation
// completes it sees the others', and every instance's guard knows the storm.
func TestStormCountsAcrossInstances(t *testing.T) {
	ns := testharness.NATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	settings := incidents.StormSettings{Vendors: 3, Window: time.Minute}
	var guards []*cluster.Storm
	for range 3 {
		js, err := jetstream.New(testharness.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		g, err := cluster.NewStorm(ctx, js, 1, settings, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = g.Run(ctx) }()
		guards = append(guards, g)
	}
	now := time.Now()
	steps := []struct {
		at     int // the instance escalating
		vendor string
		counts bool
		storm  bool
	}{
		{0, "mailer", true, false},
		{1, "crm", true, false},
		{2, "made-up-1", false, false}, // does not count: no storm with it
		{2, "billing", true, true},     // the third vendor, at a third instance
		{0, "mailer", true, true},      // a vendor of the storm escalates again: extended
	}
	for i, st := range steps {
		s, on := guards[st.at].Escalated(ctx, st.vendor, st.counts, now.Add(time.Duration(i)*time.Second))
		if on != st.storm {
			t.Fatalf("step %d (%s at instance %d): storm %t, want %t", i, st.vendor, st.at, on, st.storm)
		}
		if on && !slices.Equal(s.Vendors, []string{"billing", "crm", "mailer"}) {
			t.Fatalf("step %d: storm of %v", i, s.Vendors)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for i, g := range guards {
		for {
			if s, on := g.Current(now.Add(5 * time.Second)); on && len(s.Vendors) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d does not know the storm", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
