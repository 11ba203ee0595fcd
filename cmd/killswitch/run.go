package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/service"
)

// runRun implements `killswitch run`, the long-running service.
func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: killswitch run [--config FILE] [--playbooks DIR…] [--nats URL] [flags]\n\n"+
			"Runs the service: with no flags, an embedded NATS server with JetStream on 127.0.0.1:4222, the\n"+
			"shipped playbooks, the HTTP API on 127.0.0.1:8080, and dry-run unless VAULT_ADDR is set.")
		fs.PrintDefaults()
	}
	var pbDirs stringList
	configPath := fs.String("config", "", "configuration file (strict YAML)")
	fs.Var(&pbDirs, "playbooks", "playbook directory (repeatable, hot-reloaded); default: the shipped library")
	shipped := fs.Bool("shipped", false, "also load the shipped library with --playbooks")
	natsURL := fs.String("nats", "", "NATS server URL (default: embedded server)")
	natsCreds := fs.String("nats-creds", "", "NATS credentials file")
	natsNKey := fs.String("nats-nkey", "", "NATS nkey seed file")
	httpAddr := fs.String("http", "", "HTTP API address (default 127.0.0.1:8080)")
	dataDir := fs.String("data-dir", "", "data directory (default ./killswitch-data)")
	format := fs.String("format", "json", "telemetry format: json, vpc, ocsf, zeek")
	mode := fs.String("mode", "", "global action mode: enforce, shadow, dry-run (overrides the config)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	evalTimeout := fs.Duration("eval-timeout", 0, "the playbooks' evaluation deadline; past it a decision escalates to a human (default 50ms)")
	allowBroad := fs.Bool("allow-broad-vault-token", false, "start even with a root Vault token or one that can do more than `killswitch vault policy` grants (loud: log, /api/status, metric)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	sc := &cfg.Service
	sc.ApplyEnv(os.Getenv)
	for _, o := range []struct {
		flag  string
		field *string
	}{{*natsURL, &sc.NATS.URL}, {*natsCreds, &sc.NATS.CredsFile}, {*natsNKey, &sc.NATS.NKeyFile},
		{*httpAddr, &sc.HTTP.Listen}, {*dataDir, &sc.DataDir}} {
		if o.flag != "" {
			*o.field = o.flag
		}
	}
	if *mode != "" {
		cfg.Actions.Mode = killswitch.Mode(*mode)
	}
	if *allowBroad {
		sc.Vault.AllowBroadToken = true
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	newDecoder, err := decoderFor(*format, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 2
	}
	sources, err := playbookSources(pbDirs, *shipped)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run: --playbooks:", err)
		return 2
	}
	execs, reason, broadVault, err := vaultExecutors(ctx, cfg, *configPath, log)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	err = service.Run(ctx, service.Options{
		Config: cfg, Playbooks: sources, VaultExecutors: execs, DryRunReason: reason, VaultTokenBroad: broadVault,
		APIToken: os.Getenv(config.EnvAPIToken), NewDecoder: newDecoder, Log: log, EvalTimeout: *evalTimeout,
	})
	if err != nil {
		fmt.Fprintln(stderr, "killswitch run:", err)
		return 1
	}
	return 0
}
