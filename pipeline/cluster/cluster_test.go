package cluster

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/synadia-io/orbit.go/pcgroups"
)

// TestOfMatchesTheServer: Of names the partition NATS puts a vendor's subject in, with
// the transform the consumer groups use.
func TestOfMatchesTheServer(t *testing.T) {
	for _, n := range []int{1, 2, 8, 16, 1024} {
		tr, err := server.NewSubjectTransform("egress.*", fmt.Sprintf("{{Partition(%d,1)}}.egress.{{Wildcard(1)}}", n))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 500 {
			vendor := fmt.Sprintf("vendor-%d", i)
			got, err := tr.Match("egress." + vendor)
			if err != nil {
				t.Fatal(err)
			}
			want, _, _ := strings.Cut(got, ".")
			if fmt.Sprint(Of(vendor, n)) != want {
				t.Fatalf("Of(%q, %d) = %d, the server says %s", vendor, n, Of(vendor, n), want)
			}
		}
	}
}

func TestPartitionsOf(t *testing.T) {
	c := pcgroups.ElasticConsumerGroupConfig{MaxMembers: 8, Members: []string{"b", "a", "c"},
		PartitioningFilters: []pcgroups.PartitioningFilter{{Filter: "egress.*", PartitioningWildcards: []int{1}}, {Filter: "egress.*.>", PartitioningWildcards: []int{1}}}}
	seen := map[int]string{}
	for _, m := range []string{"a", "b", "c"} {
		ps := partitionsOf(c, m)
		if len(ps) < 2 || len(ps) > 3 {
			t.Fatalf("%s owns %v: want 2 or 3 of 8", m, ps)
		}
		for _, p := range ps {
			if o, dup := seen[p]; dup {
				t.Fatalf("partition %d owned by %s and %s", p, o, m)
			}
			seen[p] = m
		}
	}
	if len(seen) != 8 {
		t.Fatalf("%d partitions owned, want 8", len(seen))
	}
	if ps := partitionsOf(c, "d"); ps != nil {
		t.Fatalf("a non-member owns %v", ps)
	}
}
