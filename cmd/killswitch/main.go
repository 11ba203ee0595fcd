// Command killswitch is the one binary: run, replay, demo, generate, playbook
// {test,eval,check}, vault {policy,check,restore-policy}, ledger verify, users {add,list,remove}, version,
// and the on-call commands that talk to a running service's API: incidents, approvals,
// approve, reject, veto, pause, resume and status. It is thin: it parses flags, builds the pipeline from the
// packages and runs it.
package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand: it gets its arguments (without its name) and returns the
// process exit code.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"generate": {"generate labelled telemetry to a file or NATS", runGenerate},
		"demo":     {"run the whole loop on embedded defaults (builds the dev Vault on first use)", runDemo},
		"run":      {"run the service", runRun},
		"replay":   {"replay recorded telemetry through the pipeline and report", runReplay},
		"ledger":   {"verify the hash-chained audit ledger", runLedger},
		"playbook": {"test, evaluate and check the Rego playbooks", runPlaybook},
		"vault":    {"print the least-privilege Vault policy, check a token, restore a quarantined policy", runVault},
		"creds":    {"mint a sensor's NATS credentials, print an external NATS server's authorization, revoke", runCreds},
		"users":    {"add, list and remove the HTTP API's users (viewer, approver, admin)", runUsers},
		"version": {"print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "killswitch", version)
			return 0
		}},
		"healthcheck": {"ask the service's /readyz once: exit 0 if ready (container health checks)", runHealthcheck},
		"incidents":   {"list incidents, or show one (the API)", runIncidents},
		"approvals":   {"list the actions waiting for an approval and the running veto windows (the API)", runApprovals},
		"approve":     {"approve a held action: it runs once (the API)", runDecide("approve", "approved", "Runs a held action, once")},
		"reject":      {"reject a held action: it never runs (the API)", runDecide("reject", "rejected", "Drops a held action; nothing runs")},
		"veto":        {"veto an action in its veto window: it never runs (the API)", runDecide("veto", "vetoed", "Cancels an action announced in a veto window, before it runs")},
		"pause":       {"pause automation fleet-wide: destructive actions are held (the API)", runPause},
		"resume":      {"resume automation (the API)", runResume},
		"status":      {"mode, pause, breaker, ledger, storm and what waits on people (the API)", runStatus},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "killswitch: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: killswitch <command> [flags]\n\ncommands:")
	names := slices.Sorted(maps.Keys(cmds))
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
}
