// Package testharness starts the real servers tests run against: an embedded
// nats-server with JetStream, the dev Vault (cmd/devvault) as a subprocess, and a private
// PostgreSQL cluster. Nothing here is a fake.
package testharness

import (
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/nats-io/nats.go"
)

// NATS starts an embedded nats-server with JetStream (file storage in a temp dir, sync
// always) on a free loopback port and stops it when the test ends.
func NATS(tb testing.TB) *embeddednats.Server {
	tb.Helper()
	s, err := embeddednats.Start(embeddednats.Options{Port: -1, StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("start nats-server: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// Connect opens a client connection to s that reconnects forever (with a short wait),
// closed when the test ends.
func Connect(tb testing.TB, s *embeddednats.Server) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect to nats-server: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
