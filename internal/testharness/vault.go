package testharness

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/killswitch-dev/killswitch/internal/devvault"
)

// vaultBuildTimeout bounds building the dev Vault from a test; a cold build takes a few
// minutes on two cores (.ci/deps.sh pre-builds it so CI never waits here).
const vaultBuildTimeout = 15 * time.Minute

// Vault is a dev Vault started for one test.
type Vault struct {
	// Addr is the base URL, e.g. "http://127.0.0.1:41234".
	Addr string
	// RootToken is the fixed root token.
	RootToken string
	// Process controls the server: Pause/Resume for "Vault down" faults, Restart, Stop.
	Process *devvault.Process
}

// VaultOption configures DevVault.
type VaultOption func(*vaultOptions)

type vaultOptions struct {
	persistent bool
	rootToken  string
	logLevel   string
}

// WithPersistentStorage keeps Vault's data in a temp dir so that Process.Restart keeps
// secrets, mounts and leases.
func WithPersistentStorage() VaultOption {
	return func(o *vaultOptions) { o.persistent = true }
}

// WithRootToken sets the fixed root token (default "root").
func WithRootToken(token string) VaultOption {
	return func(o *vaultOptions) { o.rootToken = token }
}

// WithVaultLogLevel sets the server's -log-level (default "error"); its log lines go to
// the test log.
func WithVaultLogLevel(level string) VaultOption {
	return func(o *vaultOptions) { o.logLevel = level }
}

// DevVaultBinary returns the path of the dev Vault binary, building it when the cache
// has none for the current sources (later calls only hash the sources, a few ms; the
// cache's file lock makes concurrent test binaries build once). If it cannot be built
// the test fails when CI=true and is skipped otherwise.
func DevVaultBinary(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vaultBuildTimeout)
	defer cancel()
	bin, err := devvault.Build(ctx, devvault.BuildOptions{Progress: os.Stderr})
	if err != nil {
		unavailable(tb, "dev Vault cannot be built: %v", err)
	}
	return bin
}

// DevVault builds (once) and starts a real dev Vault on a free loopback port and stops
// it when the test ends. If it cannot be built or started the test fails when CI=true
// and is skipped otherwise.
func DevVault(tb testing.TB, opts ...VaultOption) *Vault {
	tb.Helper()
	var o vaultOptions
	for _, opt := range opts {
		opt(&o)
	}
	bin := DevVaultBinary(tb)
	so := devvault.StartOptions{
		BinPath:   bin,
		RootToken: o.rootToken,
		LogLevel:  o.logLevel,
		Logger:    zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel)),
	}
	if o.persistent {
		so.StorageDir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := devvault.Start(ctx, so)
	if err != nil {
		unavailable(tb, "dev Vault cannot be started: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			tb.Errorf("stop dev Vault: %v", err)
		}
	})
	return &Vault{Addr: p.Addr(), RootToken: p.RootToken(), Process: p}
}

// Client returns a Vault API client for v authenticated with the root token, with a
// 5 s request timeout and no retries (so faults show up at once).
func (v *Vault) Client(tb testing.TB) *api.Client {
	tb.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	cfg.Timeout = 5 * time.Second
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		tb.Fatalf("create Vault client: %v", err)
	}
	c.SetToken(v.RootToken)
	return c
}

// unavailable fails the test under CI (CI=true), where the real servers are required,
// and skips it elsewhere.
func unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf(format, args...)
	}
	tb.Skipf(format+" (skipping; set CI=true to make this a failure)", args...)
}
