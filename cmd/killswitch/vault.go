package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/replay"
	"go.uber.org/zap"
)

// vaultExecutors connects to the configured Vault and checks that the token can do what
// the inventory needs. With no Vault configured it returns no executors (dry-run).
func vaultExecutors(ctx context.Context, cfg *config.Config, log *zap.Logger) (actions.Registry, string, error) {
	if cfg.Service.Vault.Addr == "" {
		return nil, "", nil
	}
	client, err := vault.Connect(ctx, cfg.Service.Vault, os.Getenv, log.Named("vault"))
	if err != nil {
		return nil, "", err
	}
	if err := checkToken(ctx, client, cfg.Vendors, log); err != nil {
		return nil, "", err
	}
	return vault.New(client), "", nil
}

// checkToken refuses a token that lacks capabilities and warns about a root token.
func checkToken(ctx context.Context, client *api.Client, inv killswitch.Inventory, log *zap.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	root, err := vault.CheckCapabilities(cctx, client, inv)
	if err != nil {
		return err
	}
	if root {
		log.Warn("the Vault token holds root: it works, but grant the kill switch only the policy of `killswitch vault policy`")
	}
	return nil
}

// vaultActor builds replay's actor on a real Vault (exercises against a dev Vault): the
// token comes from VAULT_TOKEN.
func vaultActor(ctx context.Context, addr string, cfg *config.Config) (replay.ActorFactory, error) {
	vc := cfg.Service.Vault
	vc.Addr = addr
	client, err := vault.Connect(ctx, vc, os.Getenv, zap.NewNop())
	if err != nil {
		return nil, err
	}
	if err := checkToken(ctx, client, cfg.Vendors, zap.NewNop()); err != nil {
		return nil, err
	}
	execs := vault.New(client)
	return func(clk clock.Clock, led ledger.Appender) (pipeline.Actor, error) {
		return actions.New(cfg.Actions, actions.Deps{
			Store: actions.NewMemoryStore(), Ledger: led, Executors: execs, Inventory: cfg.Vendors, Clock: clk,
			Fingerprint: actions.NewFingerprinter([]byte("killswitch-replay")), Instance: "replay",
		})
	}, nil
}

// vaultPolicy is the shipped least-privilege policy.
func vaultPolicy() string { return vault.ShippedPolicy() }

// demoExecutors builds the demo's Vault executors on the service's own token, after
// checking that it holds what the demo inventory needs.
func demoExecutors(log *zap.Logger) func(context.Context, *api.Client, killswitch.Inventory) (actions.Registry, error) {
	return func(ctx context.Context, client *api.Client, inv killswitch.Inventory) (actions.Registry, error) {
		if err := checkToken(ctx, client, inv, log); err != nil {
			return nil, err
		}
		return vault.New(client), nil
	}
}

// runVault implements `killswitch vault {policy,check,restore-policy}`.
func runVault(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := "usage: killswitch vault policy [--config FILE] | check --config FILE | restore-policy NAME"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	fs := flag.NewFlagSet("vault "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (vendor inventory and service.vault)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault:", err)
		return 1
	}
	cfg.Service.ApplyEnv(os.Getenv)
	connect := func() (*api.Client, error) {
		if cfg.Service.Vault.Addr == "" {
			return nil, fmt.Errorf("no Vault configured: set VAULT_ADDR (and VAULT_TOKEN) or service.vault")
		}
		return vault.Connect(ctx, cfg.Service.Vault, os.Getenv, zap.NewNop())
	}
	switch args[0] {
	case "policy":
		if *cfgPath == "" {
			fmt.Fprint(stdout, vault.ShippedPolicy())
		} else {
			fmt.Fprint(stdout, vault.PolicyFor(cfg.Vendors))
		}
		return 0
	case "check":
		client, err := connect()
		if err == nil {
			err = checkToken(ctx, client, cfg.Vendors, newConsoleLogger(stderr))
		}
		if err != nil {
			fmt.Fprintln(stderr, "killswitch vault check:", err)
			return 1
		}
		fmt.Fprintln(stdout, "the Vault token holds every capability the configured actions need")
		return 0
	case "restore-policy":
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, usage)
			return 2
		}
		client, err := connect()
		if err == nil {
			err = vault.Restore(ctx, client, fs.Arg(0))
		}
		if err != nil {
			fmt.Fprintln(stderr, "killswitch vault restore-policy:", err)
			return 1
		}
		fmt.Fprintf(stdout, "policy %s restored\n", fs.Arg(0))
		return 0
	}
	fmt.Fprintln(stderr, usage)
	return 2
}

// newConsoleLogger logs warnings for humans on w.
func newConsoleLogger(w io.Writer) *zap.Logger {
	log, err := newLogger(w, "warn")
	if err != nil {
		return zap.NewNop()
	}
	return log
}
