package cluster

import (
	"context"
	"errors"
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

func TestRetryConflicts(t *testing.T) {
	conflict := errors.New("couldn't put the config: nats: API error: code=400 err_code=10071 description=wrong last sequence: 41")
	other := errors.New("nats: timeout")
	for _, tt := range []struct {
		name  string
		fails []error
		want  error
		calls int
	}{
		{"at once", nil, nil, 1},
		{"after two conflicts", []error{conflict, conflict}, nil, 3},
		{"another error is not retried", []error{other}, other, 1},
		{"too many conflicts", []error{conflict, conflict, conflict, conflict, conflict, conflict, conflict, conflict, conflict, conflict, conflict}, conflict, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := retryConflicts(context.Background(), func() error {
				calls++
				if calls <= len(tt.fails) {
					return tt.fails[calls-1]
				}
				return nil
			})
			if !errors.Is(err, tt.want) || calls != tt.calls {
				t.Fatalf("err %v after %d calls, want %v after %d", err, calls, tt.want, tt.calls)
			}
		})
	}
}
