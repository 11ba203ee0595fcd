// Package testharness starts the real servers tests run against: an embedded
// nats-server with JetStream, the dev Vault (cmd/devvault) as a subprocess, and a private
// PostgreSQL cluster. Nothing here is a fake.
package testharness

import (
	"context"
	"os"
	"path/filepath"
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

// NATSCluster starts an in-process JetStream cluster of n embedded servers (file
// storage in a temp dir, anonymous clients) on free loopback ports, ready for JetStream
// requests, and stops it when the test ends. With auth, every node runs that JWT
// authorization (the credentials of its directory work on every node).
func NATSCluster(tb testing.TB, n int, auth ...*embeddednats.Auth) *embeddednats.Cluster {
	tb.Helper()
	o := embeddednats.ClusterOptions{Nodes: n, Dir: tb.TempDir(), ReadyTimeout: 30 * time.Second}
	if len(auth) > 0 {
		o.Auth = auth[0]
	}
	c, err := embeddednats.StartCluster(context.Background(), o)
	if err != nil {
		tb.Fatalf("start nats cluster: %v", err)
	}
	tb.Cleanup(c.Shutdown)
	return c
}

// NATSAuth creates, in dir, the JWT authorization `killswitch run` would: the trust
// keys and the service, operator and automation credentials, plus a sensor credential
// "gw-1" written to the returned path.
func NATSAuth(tb testing.TB, dir string) (auth *embeddednats.Auth, sensorCreds string) {
	tb.Helper()
	auth, _, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(dir))
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range embeddednats.StandardRoles() {
		if _, _, err := auth.EnsureCreds(r, time.Now()); err != nil {
			tb.Fatal(err)
		}
	}
	creds, _, err := auth.Mint(embeddednats.User{Name: "gw-1", Role: embeddednats.RoleSensor}, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	sensorCreds = filepath.Join(dir, "sensor.creds")
	if err := os.WriteFile(sensorCreds, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return auth, sensorCreds
}
