package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/spf13/cobra"
)

// runOptions are the flags of `killswitch run`.
type runOptions struct {
	configPath, httpAddr, dataDir, format, mode, logLevel string
	pbDirs                                                []string
	shipped, allowBroad                                   bool
	nats                                                  natsconn.Options
	evalTimeout                                           time.Duration
}

func newRunCmd(getenv func(string) string) *cobra.Command {
	var o runOptions
	c := &cobra.Command{
		Use:   "run [flags]",
		Short: "run the service",
		Long: longHelp(`Runs the service: with no flags, an embedded NATS server with JetStream on 127.0.0.1:4222, the
shipped playbooks, the HTTP API on 127.0.0.1:8080, and dry-run unless VAULT_ADDR is set.`,
			`A flag overrides the environment ($KILLSWITCH_NATS_URL, $KILLSWITCH_HTTP_LISTEN,
$KILLSWITCH_DATA_DIR, $VAULT_ADDR…), which overrides the configuration file.`,
			`Exit status: 0 stopped cleanly (SIGINT, SIGTERM); 1 failed to start or failed; 2 usage error.`),
		Args: cobra.NoArgs,
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			return runRun(ctx, &o, c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.StringVar(&o.configPath, "config", "", "configuration file (strict YAML)")
	fs.StringArrayVar(&o.pbDirs, "playbooks", nil, "playbook directory (repeatable, hot-reloaded); default: the shipped library")
	fs.BoolVar(&o.shipped, "shipped", false, "also load the shipped library with --playbooks")
	registerNATSFlags(fs, &o.nats, getenv, "", "service.nats.url of --config, else an embedded server (on service.nats.listen, default 127.0.0.1:4222)")
	fs.StringVar(&o.httpAddr, "http", "", "HTTP API address (default 127.0.0.1:8080)")
	fs.StringVar(&o.dataDir, "data-dir", "", "data directory (default ./killswitch-data)")
	fs.StringVar(&o.format, "format", "json", "telemetry format: json, vpc, ocsf, zeek")
	fs.StringVar(&o.mode, "mode", "", "global action mode: enforce, shadow, dry-run (overrides the config)")
	registerLogLevel(c, &o.logLevel, getenv, "the service's")
	fs.DurationVar(&o.evalTimeout, "eval-timeout", 0, "the playbooks' evaluation deadline; past it a decision escalates to a human (default 50ms)")
	fs.BoolVar(&o.allowBroad, "allow-broad-vault-token", false, "start even with a root Vault token or one that can do more than `killswitch vault policy` grants (loud: log, /api/status, metric)")
	_ = c.MarkFlagDirname("playbooks")
	_ = c.MarkFlagDirname("data-dir")
	completeValues(c, "format", "json", "vpc", "ocsf", "zeek")
	completeValues(c, "mode", "enforce", "shadow", "dry-run")
	return c
}

// runRun implements `killswitch run`, the long-running service.
func runRun(ctx context.Context, o *runOptions, stderr io.Writer) int {
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	cfg, err := loadConfig(o.configPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	sc := &cfg.Service
	sc.ApplyEnv(os.Getenv)
	for _, f := range []struct {
		flag  string
		field *string
	}{{o.nats.URL, &sc.NATS.URL}, {o.nats.CredsFile, &sc.NATS.CredsFile}, {o.nats.NKeyFile, &sc.NATS.NKeyFile},
		{o.nats.TLSCA, &sc.NATS.TLSCA}, {o.nats.TLSCert, &sc.NATS.TLSCert}, {o.nats.TLSKey, &sc.NATS.TLSKey},
		{o.httpAddr, &sc.HTTP.Listen}, {o.dataDir, &sc.DataDir}} {
		if f.flag != "" {
			*f.field = f.flag
		}
	}
	if o.mode != "" {
		cfg.Actions.Mode = killswitch.Mode(o.mode)
	}
	if o.allowBroad {
		sc.Vault.AllowBroadToken = true
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	newDecoder, err := decoderFor(o.format, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 2
	}
	sources, err := playbookSources(o.pbDirs, o.shipped)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run: --playbooks:", err)
		return 2
	}
	execs, vaultClient, broadVault, err := vaultExecutors(ctx, cfg, o.configPath, log)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	err = service.Run(ctx, service.Options{
		Config: cfg, Playbooks: sources, VaultExecutors: execs, VaultClient: vaultClient, VaultTokenBroad: broadVault,
		APIToken: os.Getenv(config.EnvAPIToken), NewDecoder: newDecoder, Log: log, EvalTimeout: o.evalTimeout,
	})
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	return 0
}
