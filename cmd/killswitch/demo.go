package main

import (
	"context"
	"flag"
	"fmt"
	"io"
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch demo:", err)
		return 2
	}
	fmt.Fprintln(stdout, "Killswitch demo: a vendor's token is stolen and used to exfiltrate data; watch it get cut off.")
	err = demo.Run(ctx, demo.Options{
		Out: stdout, Log: log, VaultPolicy: vaultPolicy, NewVaultExecutors: demoExecutors(log),
		HistoryDays: *days, Timeout: *timeout,
	})
	if err != nil {
		fmt.Fprintln(stderr, "\nkillswitch demo: FAILED:", err)
		return 1
	}
	fmt.Fprintln(stdout, "\nDemo complete: the stolen credential was verified dead.")
	return 0
}
