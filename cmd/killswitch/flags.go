package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The environment variables flag defaults come from.
const (
	envNATSURL  = config.EnvNATSURL // KILLSWITCH_NATS_URL
	envLogLevel = "KILLSWITCH_LOG_LEVEL"
	envAPI      = "KILLSWITCH_API"
	// defaultNATSURL is where the commands that connect to a running service's NATS
	// look: the embedded server of `killswitch run` listens there.
	defaultNATSURL = "nats://127.0.0.1:4222"
	// defaultLogLevel is the log level of every command that logs.
	defaultLogLevel = "info"
)

// exitError ends a command with an exit code; what went wrong has been printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exits adapts a command body that prints its own messages and returns its exit code.
func exits(f func(ctx context.Context, c *cobra.Command, args []string) int) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		if code := f(c.Context(), c, args); code != exitOK {
			return exitError{code}
		}
		return nil
	}
}

// wantArgs accepts exactly n positional arguments (a usage error otherwise).
func wantArgs(n int) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("want %d argument(s), got %d", n, len(args))
		}
		return nil
	}
}

// registerNATSFlags adds the NATS connection flags every command that uses NATS takes:
// --nats, --nats-creds, --nats-nkey, --nats-tls-ca, --nats-tls-cert, --nats-tls-key.
// --nats defaults to $KILLSWITCH_NATS_URL, else to the command's natural default: def,
// described by defName.
func registerNATSFlags(fs *pflag.FlagSet, o *natsconn.Options, getenv func(string) string, def, defName string) {
	if v := getenv(envNATSURL); v != "" {
		def = v
	}
	fs.StringVar(&o.URL, "nats", def, "NATS server URL, comma-separated for a cluster; $"+envNATSURL+" when set, else "+defName)
	fs.StringVar(&o.CredsFile, "nats-creds", "", "NATS credentials file (JWT and nkey seed)")
	fs.StringVar(&o.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&o.TLSCA, "nats-tls-ca", "", "CA bundle to verify the NATS server")
	fs.StringVar(&o.TLSCert, "nats-tls-cert", "", "client certificate for NATS (with --nats-tls-key)")
	fs.StringVar(&o.TLSKey, "nats-tls-key", "", "client key for NATS (with --nats-tls-cert)")
}

// registerLogLevel adds --log-level, defaulting to $KILLSWITCH_LOG_LEVEL, else info.
func registerLogLevel(c *cobra.Command, level *string, getenv func(string) string, what string) {
	def := defaultLogLevel
	if v := getenv(envLogLevel); v != "" {
		def = v
	}
	c.Flags().StringVar(level, "log-level", def, what+" log level: debug, info, warn, error; $"+envLogLevel+" when set, else "+defaultLogLevel)
	completeValues(c, "log-level", "debug", "info", "warn", "error")
}

// deprecatedAlias adds old as a hidden, deprecated name of the flag name: it sets the
// same value and prints a one-line notice to stderr when used.
func deprecatedAlias(fs *pflag.FlagSet, old, name string) {
	f := fs.Lookup(name)
	fs.AddFlag(&pflag.Flag{Name: old, Usage: f.Usage, Value: f.Value, DefValue: f.DefValue, NoOptDefVal: f.NoOptDefVal})
	_ = fs.MarkDeprecated(old, "use --"+name)
}

// completeValues makes flag name complete to values in the shells.
func completeValues(c *cobra.Command, name string, values ...string) {
	_ = c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

// compatArgs rewrites the flags written with one dash (-config) into two (--config),
// when some command has a flag of that name: the commands parsed their flags with the
// standard library's flag package, which takes both, and scripts may use one dash.
// Arguments after "--" are left alone.
func compatArgs(root *cobra.Command, args []string) []string {
	names := map[string]bool{}
	walkCommands(root, func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
	})
	// A flag written with one dash, as the standard library's flag package accepted
	// (-config FILE, -json=x.json).
	singleDashFlag := regexp.MustCompile(`^-([a-z][a-z0-9-]+)(=.*)?$`)
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if m := singleDashFlag.FindStringSubmatch(a); m != nil && names[m[1]] {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}

// longHelp joins paragraphs of a command's help.
func longHelp(paragraphs ...string) string {
	return strings.Join(paragraphs, "\n\n")
}
