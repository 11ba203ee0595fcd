// Command killswitch is the one binary: run, replay, demo, generate, playbook
// {test,eval,check,export}, vault {policy,check,restore-policy}, ledger {verify,seal},
// creds, users {add,list,remove}, healthcheck, version, and the on-call commands that
// talk to a running service's API: incidents, approvals, approve, reject, veto, pause,
// resume and status. It is thin: it parses flags (github.com/spf13/cobra), builds the
// pipeline from the packages and runs it.
//
// The command reference, docs/cli.md, is generated from the command tree:
//
//go:generate go test -run TestCLIReference -update .
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// dispatch runs the command line args and returns the process exit code: the command's
// own, or 2 for a usage error (unknown command or flag, bad flag value, wrong number of
// arguments), printed as one line and a hint.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(os.Getenv)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// A deprecated flag's notice goes to stderr, never into a command's output.
	walkCommands(root, func(c *cobra.Command) { c.Flags().SetOutput(stderr) })
	if len(args) == 0 { // the usage, on stderr, and exit 2
		root.SetOut(stderr)
		_ = root.Usage()
		return exitUsage
	}
	root.SetArgs(compatArgs(root, args))
	c, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if c == nil {
		c = root
	}
	msg, hint := explainUsageError(err)
	fmt.Fprintf(stderr, "%s: %s\n", c.CommandPath(), msg)
	fmt.Fprintf(stderr, "%sRun '%s --help' for usage.\n", hint, c.CommandPath())
	return exitUsage
}

// explainUsageError splits one of cobra's errors into its first line and, when cobra
// found close names, a "did you mean" hint.
func explainUsageError(err error) (msg, hint string) {
	msg, rest, _ := strings.Cut(err.Error(), "\n")
	if _, sugg, ok := strings.Cut(rest, "Did you mean this?"); ok {
		if names := strings.Fields(sugg); len(names) > 0 {
			hint = "Did you mean " + strings.Join(names, " or ") + "? "
		}
	}
	return msg, hint
}

// newRootCmd builds the whole command tree. getenv supplies the environment that flag
// defaults come from (KILLSWITCH_NATS_URL, KILLSWITCH_API, KILLSWITCH_LOG_LEVEL).
func newRootCmd(getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:   "killswitch",
		Short: "cut a breached vendor's credentials off, and prove they are dead",
		Long: `Killswitch watches egress telemetry per vendor and credential, flags anomalous volumes,
lets analysts decide in Rego what happens, revokes the vendor's credentials through Vault
and verifies they are dead. Every incident carries its measured exposure window.

Flags take two dashes (--config); one dash (-config) is accepted too, as before.
Shell completion: killswitch completion bash|zsh|fish --help.`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("killswitch {{.Version}}\n")
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.AddGroup(
		&cobra.Group{ID: "service", Title: "The service and its exercises:"},
		&cobra.Group{ID: "oncall", Title: "On call (the HTTP API of a running service):"},
		&cobra.Group{ID: "admin", Title: "Administration:"},
	)
	for _, c := range []*cobra.Command{newRunCmd(getenv), newReplayCmd(getenv), newDemoCmd(getenv), newGenerateCmd(getenv)} {
		c.GroupID = "service"
		root.AddCommand(c)
	}
	for _, c := range newOnCallCmds(getenv) {
		c.GroupID = "oncall"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newPlaybookCmd(), newLedgerCmd(getenv), newVaultCmd(), newCredsCmd(), newUsersCmd(), newHealthcheckCmd()} {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	root.AddCommand(newVersionCmd(), newCompletionCmd())
	root.SetHelpCommand(newHelpCmd(root))
	root.InitDefaultHelpCmd()
	finishTree(root)
	return root
}

// finishTree makes every command group (a command that only holds subcommands) exit 2
// with its usage when run without a known subcommand, and gives every command help.
func finishTree(root *cobra.Command) {
	walkCommands(root, func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		c.InitDefaultVersionFlag()
		c.SuggestionsMinimumDistance = 2
		if c != root && c.HasSubCommands() && !c.Runnable() {
			c.DisableFlagParsing = true
			c.Args = cobra.ArbitraryArgs
			c.RunE = runGroup
		}
	})
}

// walkCommands calls f on c and every command below it, hidden ones too.
func walkCommands(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, s := range c.Commands() {
		walkCommands(s, f)
	}
}

// runGroup runs a command group without a known subcommand: help on --help or -h,
// else a usage error (exit 2) that names the unknown subcommand or flag.
func runGroup(c *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		fmt.Fprintf(c.ErrOrStderr(), "%s: give a command\n\n", c.CommandPath())
		c.SetOut(c.ErrOrStderr())
		_ = c.Usage()
		return exitError{exitUsage}
	case args[0] == "-h" || args[0] == "--help":
		return c.Help()
	case strings.HasPrefix(args[0], "-"):
		return fmt.Errorf("unknown flag: %s", args[0])
	}
	err := fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		err = fmt.Errorf("%w\n\nDid you mean this?\n\t%s", err, strings.Join(s, "\n\t"))
	}
	return err
}

// newHelpCmd is `killswitch help [COMMAND…]`: the command's help, exit 0; an unknown
// command is a usage error (exit 2).
func newHelpCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "help about any command",
		Long:  "Prints the help of any command: killswitch help ledger verify is killswitch ledger verify --help.",
		ValidArgsFunction: func(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := root.Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, s := range target.Commands() {
				if s.IsAvailableCommand() && strings.HasPrefix(s.Name(), toComplete) {
					out = append(out, cobra.CompletionWithDesc(s.Name(), s.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(_ *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return fmt.Errorf("unknown command %q for %q", rest[0], target.CommandPath())
			}
			return target.Help()
		},
	}
}

// newCompletionCmd is `killswitch completion bash|zsh|fish|powershell`: the shells'
// completion scripts, which complete commands, flags and the values of enumerated
// flags (--format, --log-level, --mode, --state, --role).
func newCompletionCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "completion",
		Short: "print the shell completion script (bash, zsh, fish, powershell)",
		Long: `Prints the completion script of a shell; it completes commands, flags and the values of
enumerated flags (--format, --log-level, --mode, --state, --role). See each shell's help
(killswitch completion bash --help) for how to install it.`,
	}
	shell := func(name, long string, gen func(root *cobra.Command, w io.Writer) error) *cobra.Command {
		return &cobra.Command{
			Use: name, Short: "print the " + name + " completion script", Long: long, Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return gen(c.Root(), c.OutOrStdout()) },
		}
	}
	c.AddCommand(
		shell("bash", `Prints the bash completion script (needs the bash-completion package).

In the current shell:
  source <(killswitch completion bash)
For every new shell (Linux):
  killswitch completion bash > /etc/bash_completion.d/killswitch
macOS (Homebrew):
  killswitch completion bash > $(brew --prefix)/etc/bash_completion.d/killswitch`,
			func(root *cobra.Command, w io.Writer) error { return root.GenBashCompletionV2(w, true) }),
		shell("zsh", `Prints the zsh completion script.

If completion is not enabled yet in zsh:
  echo "autoload -U compinit; compinit" >> ~/.zshrc
In the current shell:
  source <(killswitch completion zsh)
For every new shell:
  killswitch completion zsh > "${fpath[1]}/_killswitch"`,
			func(root *cobra.Command, w io.Writer) error { return root.GenZshCompletion(w) }),
		shell("fish", `Prints the fish completion script.

In the current shell:
  killswitch completion fish | source
For every new shell:
  killswitch completion fish > ~/.config/fish/completions/killswitch.fish`,
			func(root *cobra.Command, w io.Writer) error { return root.GenFishCompletion(w, true) }),
		shell("powershell", `Prints the PowerShell completion script.

In the current shell:
  killswitch completion powershell | Out-String | Invoke-Expression`,
			func(root *cobra.Command, w io.Writer) error { return root.GenPowerShellCompletionWithDesc(w) }),
	)
	return c
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "killswitch", version) },
	}
}

// usageTemplate is cobra's, except that a command group (a command that only holds
// subcommands) shows "killswitch GROUP [command]" only, not a use line of its own.
const usageTemplate = `Usage:{{if and .Runnable (not .DisableFlagParsing)}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

Available Commands:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if not .AllChildCommandsHaveGroup}}

Additional Commands:{{range $cmds}}{{if (and (eq .GroupID "") (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`
