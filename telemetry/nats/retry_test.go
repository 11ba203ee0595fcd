package nats

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestRetryUnready(t *testing.T) {
	other := errors.New("nats: stream not found")
	for _, tt := range []struct {
		name  string
		fails []error
		want  error
		calls int
	}{
		{"at once", nil, nil, 1},
		{"after no responders twice", []error{nats.ErrNoResponders, fmt.Errorf("create: %w", nats.ErrNoResponders)}, nil, 3},
		{"another error is returned at once", []error{other}, other, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := RetryUnready(context.Background(), func() error {
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
