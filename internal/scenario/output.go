package scenario

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"

	"github.com/killswitch-dev/killswitch/internal/pace"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// WriteNDJSON writes the scenario's events to w in the telemetry wire format, one per
// line, gzip-compressed when gz is set, and returns how many it wrote.
func (s *Scenario) WriteNDJSON(w io.Writer, gz bool) (int, error) {
	var zw *gzip.Writer
	if gz {
		zw, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var buf []byte
	n := 0
	var err error
	s.Events(func(e *telemetry.Event) bool {
		buf = append(telemetry.AppendJSON(buf[:0], e), '\n')
		if _, err = bw.Write(buf); err != nil {
			return false
		}
		n++
		return true
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err != nil {
		return n, fmt.Errorf("scenario: write: %w", err)
	}
	return n, nil
}

// Publish publishes the scenario's events to JetStream as they "happen", paced by p
// (nil: as fast as possible, pipelined), until all are acknowledged or ctx is done; it
// returns how many it published.
func (s *Scenario) Publish(ctx context.Context, pub *telemetry.Publisher, p *pace.Pacer) (int, error) {
	n := 0
	var err error
	s.Events(func(e *telemetry.Event) bool {
		if p != nil {
			if err = p.Wait(ctx, e.Time); err == nil {
				err = pub.Publish(ctx, e)
			}
		} else {
			_, err = pub.PublishAsync(e)
		}
		if err != nil {
			return false
		}
		n++
		return true
	})
	if err == nil && p == nil {
		err = pub.WaitAsync(ctx)
	}
	if err != nil {
		return n, fmt.Errorf("scenario: publish: %w", err)
	}
	return n, nil
}
