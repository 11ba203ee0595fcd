package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/killswitch-dev/killswitch/demo"
	"github.com/spf13/cobra"
)

// demoOptions are the flags of `killswitch demo`.
type demoOptions struct {
	timeout   time.Duration
	days      int
	logLevel  string
	clustered bool
	kill      bool
}

func newDemoCmd(getenv func(string) string) *cobra.Command {
	var o demoOptions
	c := &cobra.Command{
		Use:   "demo [flags]",
		Short: "run the whole loop on embedded defaults (builds the dev Vault on first use)",
		Long: longHelp(`Runs the whole loop on embedded defaults: a NATS server, a dev Vault (built on first use,
from the repository), the service and a scripted attack. A vendor's token is stolen and used
to exfiltrate data; the demo narrates on stdout how it is detected, revoked and verified dead.
The service's own log goes to stderr (--log-level error keeps only the narration).`,
			`Exit status: 0 the stolen credential was verified dead; 1 it was not (or the demo failed);
2 usage error.`),
		Args: cobra.NoArgs,
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			return runDemo(ctx, &o, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	fs := c.Flags()
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up when the stolen credential is not verified dead by then")
	fs.IntVar(&o.days, "history-days", 4, "days of telemetry the detectors learn from before the attack")
	registerLogLevel(c, &o.logLevel, getenv, "the service's")
	fs.BoolVar(&o.kill, "kill-vendor", false, "add a second act: a whole vendor (tokens of its entity, secret-ids, KV) cut off in one plan, then restored after a false positive, with both times")
	fs.BoolVar(&o.clustered, "cluster", false, "run on a 3-node NATS cluster with 3 instances (OS processes), and kill the attacked vendor's owner as the attack starts")
	return c
}

// runDemo implements `killswitch demo`: the whole loop on embedded defaults.
func runDemo(ctx context.Context, opts *demoOptions, stdout, stderr io.Writer) int {
	log, err := newLogger(stderr, opts.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch demo:", err)
		return 2
	}
	fmt.Fprintln(stdout, "Killswitch demo: a vendor's token is stolen and used to exfiltrate data; watch it get cut off.")
	o := demo.Options{
		Out: stdout, Log: log, VaultPolicy: vaultPolicy, NewVaultExecutors: demoExecutors(log),
		HistoryDays: opts.days, Timeout: opts.timeout, KillVendor: opts.kill,
	}
	if opts.clustered {
		if o.Binary, err = os.Executable(); err != nil {
			fmt.Fprintln(stderr, "killswitch demo:", err)
			return 1
		}
		err = demo.RunCluster(ctx, o)
	} else {
		err = demo.Run(ctx, o)
	}
	if err != nil {
		fmt.Fprintln(stderr, "\nkillswitch demo: FAILED:", err)
		return 1
	}
	fmt.Fprintln(stdout, "\nDemo complete: the stolen credential was verified dead.")
	return 0
}
