package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/killswitch-dev/killswitch/demo"
)

// runDemo implements `killswitch demo`: the whole loop on embedded defaults.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 60*time.Second, "give up when the stolen credential is not verified dead by then")
	days := fs.Int("history-days", 4, "days of telemetry the detectors learn from before the attack")
	logLevel := fs.String("log-level", "error", "service log level (to stderr)")
	clustered := fs.Bool("cluster", false, "run on a 3-node NATS cluster with 3 instances (OS processes), and kill the attacked vendor's owner as the attack starts")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch demo:", err)
		return 2
	}
	fmt.Fprintln(stdout, "Killswitch demo: a vendor's token is stolen and used to exfiltrate data; watch it get cut off.")
	o := demo.Options{
		Out: stdout, Log: log, VaultPolicy: vaultPolicy, NewVaultExecutors: demoExecutors(log),
		HistoryDays: *days, Timeout: *timeout,
	}
	if *clustered {
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
