package main

import (
	"context"
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
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// vaultExecutors connects to the configured Vault and checks that the token can do what
// the inventory needs and nothing more (see checkToken). With no Vault configured it
// returns no executors (dry-run). client is the Vault client (kill-vendor enumerates and
// restore re-issues with it). broad reports a broad token that the configuration
// (service.vault.allow_broad_token, --allow-broad-vault-token) allowed.
func vaultExecutors(ctx context.Context, cfg *config.Config, cfgPath string, log *zap.Logger) (execs actions.Registry, client *api.Client, broad bool, err error) {
	if cfg.Service.Vault.Addr == "" {
		return nil, nil, false, nil
	}
	client, err = vault.Connect(ctx, cfg.Service.Vault, os.Getenv, log.Named("vault"))
	if err != nil {
		return nil, nil, false, err
	}
	if broad, err = checkToken(ctx, client, cfg.Vendors, tokenRules{allowBroad: cfg.Service.Vault.AllowBroadToken, configPath: cfgPath}, log); err != nil {
		return nil, nil, false, err
	}
	return vault.New(client), client, broad, nil
}

// tokenRules says what checkToken accepts.
type tokenRules struct {
	// allowBroad accepts, loudly, a root token or one that can do more than the policy.
	allowBroad bool
	// quiet does not log an allowed broad token (replay exercises against a dev Vault).
	quiet bool
	// configPath is named in the fix of a refusal.
	configPath string
}

// checkToken refuses a token that lacks capabilities the inventory needs
// (vault.CheckCapabilities), and a root token or one that can do more than the
// inventory's policy (vault.CheckScope) unless rules.allowBroad; then it logs an error
// and returns broad=true.
func checkToken(ctx context.Context, client *api.Client, inv killswitch.Inventory, rules tokenRules, log *zap.Logger) (broad bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := vault.CheckCapabilities(cctx, client, inv); err != nil {
		return false, err
	}
	scope, err := vault.CheckScope(cctx, client, inv)
	if err != nil {
		return false, err
	}
	serr := scope.Err()
	switch {
	case serr == nil:
		return false, nil
	case !rules.allowBroad:
		return false, fmt.Errorf("%w\n%s", serr, broadTokenFix(rules.configPath))
	}
	if !rules.quiet {
		log.Error("BROAD VAULT TOKEN allowed by --allow-broad-vault-token: a stolen killswitch token could revoke, read or rewrite "+
			"far more than the inventory; give killswitch a token holding only `killswitch vault policy --config …`",
			zap.Bool("root", scope.Root), zap.Strings("beyond_policy", scope.Excess))
	}
	return true, nil
}

// broadTokenFix says how to get a scoped token, or to accept the broad one.
func broadTokenFix(configPath string) string {
	if configPath == "" {
		configPath = "killswitch.yaml"
	}
	return "fix: give killswitch a token holding only the policy generated for its inventory:\n" +
		"  killswitch vault policy --config " + configPath + " | vault policy write killswitch -\n" +
		"  vault token create -orphan -policy=killswitch -period=24h   (or an AppRole role with token_policies=killswitch)\n" +
		"or accept this token, loudly: killswitch run --allow-broad-vault-token (service.vault.allow_broad_token: true)"
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
	// A tabletop exercise may run against a dev Vault's root token: only what is
	// missing is refused.
	if _, err := checkToken(ctx, client, cfg.Vendors, tokenRules{allowBroad: true, quiet: true}, zap.NewNop()); err != nil {
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

// vaultPolicy generates the policy scoped to an inventory (the demo's token holds it).
func vaultPolicy(inv killswitch.Inventory) (string, error) { return vault.PolicyFor(inv) }

// demoExecutors builds the demo's Vault executors on the service's own token, after
// checking that it holds what the demo inventory needs and nothing more.
func demoExecutors(log *zap.Logger) func(context.Context, *api.Client, killswitch.Inventory) (actions.Registry, error) {
	return func(ctx context.Context, client *api.Client, inv killswitch.Inventory) (actions.Registry, error) {
		if _, err := checkToken(ctx, client, inv, tokenRules{}, log); err != nil {
			return nil, err
		}
		return vault.New(client), nil
	}
}

// newVaultCmd is `killswitch vault {policy,check,restore-policy}`.
func newVaultCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "vault",
		Short: "print the least-privilege Vault policy, check a token, restore a quarantined policy",
		Long: longHelp(`Vault is where Killswitch revokes. Its token should hold exactly the policy generated for
the inventory (vault policy), and nothing more (vault check).`,
			`The Vault address and token come from service.vault of --config, or $VAULT_ADDR and $VAULT_TOKEN.`),
	}
	sub := func(use, short, long string, args cobra.PositionalArgs, run func(ctx context.Context, cfgPath string, args []string, stdout, stderr io.Writer) int) *cobra.Command {
		var cfgPath string
		s := &cobra.Command{
			Use: use, Short: short, Long: longHelp(long, "Exit status: 0 done; 1 failed; 2 usage error."), Args: args,
			RunE: exits(func(ctx context.Context, c *cobra.Command, args []string) int {
				return run(ctx, cfgPath, args, c.OutOrStdout(), c.ErrOrStderr())
			}),
		}
		s.Flags().StringVar(&cfgPath, "config", "", "configuration file (vendor inventory and service.vault)")
		return s
	}
	c.AddCommand(
		sub("policy --config FILE", "print the least-privilege Vault policy for the inventory",
			`Prints the Vault policy (HCL) that allows exactly what the inventory's actions need: give
Killswitch a token holding only it.
  killswitch vault policy --config killswitch.yaml | vault policy write killswitch -`,
			cobra.NoArgs, vaultPolicyCmd),
		sub("check [--config FILE]", "check that the Vault token can do what the inventory needs, and nothing more",
			`Asks Vault what the configured token can do: it must hold every capability the configured
actions need, and not be a root token or one that can do more than vault policy grants.`,
			cobra.NoArgs, vaultCheckCmd),
		sub("restore-policy NAME [--config FILE]", "restore a policy that an action quarantined",
			`Restores the Vault policy NAME that a quarantine action replaced with a deny-all policy.`,
			wantArgs(1), vaultRestoreCmd),
	)
	return c
}

// vaultConfig loads the configuration and applies the environment (VAULT_ADDR…).
func vaultConfig(cfgPath string) (*config.Config, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, err
	}
	cfg.Service.ApplyEnv(os.Getenv)
	return cfg, nil
}

// vaultConnect connects to the configured Vault.
func vaultConnect(ctx context.Context, cfg *config.Config) (*api.Client, error) {
	if cfg.Service.Vault.Addr == "" {
		return nil, fmt.Errorf("no Vault configured: set VAULT_ADDR (and VAULT_TOKEN) or service.vault")
	}
	return vault.Connect(ctx, cfg.Service.Vault, os.Getenv, zap.NewNop())
}

// vaultPolicyCmd implements `killswitch vault policy`.
func vaultPolicyCmd(_ context.Context, cfgPath string, _ []string, stdout, stderr io.Writer) int {
	if cfgPath == "" {
		fmt.Fprintln(stderr, "killswitch vault policy: --config is required: the policy names the inventory's exact credentials "+
			"(actions/vault/killswitch-policy.hcl is an example generated for actions/vault/testdata/example-inventory.yaml)")
		return 2
	}
	cfg, err := vaultConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault:", err)
		return 1
	}
	policy, err := vault.PolicyFor(cfg.Vendors)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault policy:", err)
		return 1
	}
	fmt.Fprint(stdout, policy)
	return 0
}

// vaultCheckCmd implements `killswitch vault check`.
func vaultCheckCmd(ctx context.Context, cfgPath string, _ []string, stdout, stderr io.Writer) int {
	cfg, err := vaultConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault:", err)
		return 1
	}
	client, err := vaultConnect(ctx, cfg)
	if err == nil {
		_, err = checkToken(ctx, client, cfg.Vendors, tokenRules{configPath: cfgPath}, newConsoleLogger(stderr))
	}
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault check:", err)
		return 1
	}
	fmt.Fprintln(stdout, "the Vault token holds every capability the configured actions need, and nothing more")
	return 0
}

// vaultRestoreCmd implements `killswitch vault restore-policy NAME`.
func vaultRestoreCmd(ctx context.Context, cfgPath string, args []string, stdout, stderr io.Writer) int {
	cfg, err := vaultConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault:", err)
		return 1
	}
	client, err := vaultConnect(ctx, cfg)
	if err == nil {
		err = vault.Restore(ctx, client, args[0])
	}
	if err != nil {
		fmt.Fprintln(stderr, "killswitch vault restore-policy:", err)
		return 1
	}
	fmt.Fprintf(stdout, "policy %s restored\n", args[0])
	return 0
}

// newConsoleLogger logs warnings for humans on w.
func newConsoleLogger(w io.Writer) *zap.Logger {
	log, err := newLogger(w, "warn")
	if err != nil {
		return zap.NewNop()
	}
	return log
}
