package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/spf13/cobra"
)

const credsHelp = `NATS identities (decentralized JWT auth; nsc-compatible .creds files). ` + "`killswitch run`" + ` creates
the keys and the service, operator and automation credentials in <data dir>/creds on its first start.

DIR: --data-dir, $` + config.EnvDataDir + ` or ./killswitch-data. A .creds file is a secret: hand it over
as you would a password; it is written 0600 (stdout if --out is not given).`

// credsOptions are the flags of the creds commands.
type credsOptions struct {
	dataDir, out, prefix string
	vendors              []string
	expires              time.Duration
	keep                 bool
}

// newCredsCmd is `killswitch creds {sensor,nats-config,revoke,list}`.
func newCredsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "creds",
		Short: "mint a sensor's NATS credentials, print an external NATS server's authorization, revoke",
		Long:  credsHelp,
	}
	sub := func(name, use, short, long string, args cobra.PositionalArgs) (*cobra.Command, *credsOptions) {
		var o credsOptions
		s := &cobra.Command{
			Use: use, Short: short, Long: longHelp(long, "Exit status: 0 done; 1 failed; 2 usage error."), Args: args,
			RunE: exits(func(_ context.Context, c *cobra.Command, args []string) int {
				return runCreds(name, &o, args, c.OutOrStdout(), c.ErrOrStderr())
			}),
		}
		s.Flags().StringVar(&o.dataDir, "data-dir", "", "the service's data directory (default: $"+config.EnvDataDir+", else ./killswitch-data)")
		_ = s.MarkFlagDirname("data-dir")
		return s, &o
	}
	sensor, so := sub("sensor", "sensor NAME [--vendor V]… [flags]", "mint a sensor credential: publish telemetry only",
		`Mints a sensor credential: publish telemetry only (egress.> or egress.<V> for each --vendor),
JetStream acks on the inbox prefix `+embeddednats.SensorInboxPrefix+`. Works while the service runs.`, wantArgs(1))
	sensor.Flags().StringArrayVar(&so.vendors, "vendor", nil, "bind the sensor to this vendor's subject (repeatable); default every vendor")
	sensor.Flags().StringVar(&so.prefix, "prefix", embeddednats.DefaultTelemetryPrefix, "telemetry subject prefix")
	sensor.Flags().DurationVar(&so.expires, "expires", 0, "the credential stops working after this long (default never)")
	sensor.Flags().StringVar(&so.out, "out", "", "write to this file (0600) instead of stdout")
	sensor.Flags().BoolVar(&so.keep, "keep-existing", false, "with --out: if the file exists, keep it and succeed (for deployments)")
	natsConfig, no := sub("nats-config", "nats-config [flags]", "print the authorization to install in an external nats-server",
		`Prints the authorization (trusted operator, accounts) to install in an external nats-server,
and writes the service, operator and automation credentials if missing.`, cobra.NoArgs)
	natsConfig.Flags().StringVar(&no.out, "out", "", "write to this file instead of stdout")
	revoke, _ := sub("revoke", "revoke NAME|USER_PUBLIC_KEY [flags]", "revoke a credential",
		`Revokes a credential; takes effect at the embedded server's next start, or once the output
of nats-config is installed again and the external server reloaded.`, wantArgs(1))
	list, _ := sub("list", "list [flags]", "list the credentials issued (names, roles, public keys; no secret)",
		`Lists the credentials issued (names, roles, public keys; no secret).`, cobra.NoArgs)
	c.AddCommand(sensor, natsConfig, revoke, list)
	return c
}

// runCreds implements the creds commands.
func runCreds(cmd string, o *credsOptions, args []string, stdout, stderr io.Writer) int {
	dataDir, out, vendors, prefix, expires, keep := &o.dataDir, &o.out, o.vendors, &o.prefix, &o.expires, &o.keep
	var name string
	if len(args) > 0 {
		name = args[0]
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "killswitch creds %s: %v\n", cmd, err)
		return 1
	}
	dir := dataDirOr(*dataDir)
	auth, created, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(dir))
	if err != nil {
		return fail(err)
	}
	for _, p := range created {
		fmt.Fprintf(stderr, "created %s (keep it private)\n", p)
	}
	now := time.Now()
	switch cmd {
	case "sensor":
		if _, err := os.Stat(*out); *out != "" && *keep && err == nil {
			fmt.Fprintf(stderr, "%s exists: kept\n", *out)
			return 0
		}
		u := embeddednats.User{Name: name, Role: embeddednats.RoleSensor, Vendors: vendors, Prefix: *prefix}
		if *expires > 0 {
			u.Expires = now.Add(*expires)
		}
		b, rec, err := auth.Mint(u, now)
		if err != nil {
			return fail(err)
		}
		if err := writeSecret(*out, b, stdout); err != nil {
			return fail(err)
		}
		if *out != "" {
			fmt.Fprintf(stderr, "sensor %q (%s): %s; publish with: nats --creds %s --inbox-prefix %s pub --jetstream %s.<vendor> …\n",
				rec.Name, rec.PublicKey, *out, *out, embeddednats.SensorInboxPrefix, *prefix)
		}
	case "nats-config":
		for _, r := range embeddednats.StandardRoles() {
			p, made, err := auth.EnsureCreds(r, now)
			if err != nil {
				return fail(err)
			}
			if made {
				fmt.Fprintf(stderr, "wrote %s credentials: %s\n", r, p)
			}
		}
		cfg, err := auth.ServerConfig()
		if err != nil {
			return fail(err)
		}
		if *out == "" {
			fmt.Fprint(stdout, cfg)
		} else if err := os.WriteFile(*out, []byte(cfg), 0o644); err != nil { // no secret in it
			return fail(err)
		}
	case "revoke":
		keys, err := auth.Revoke(name, now)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "revoked %s (%s): restart `killswitch run` (embedded NATS), or install the output of "+
			"`killswitch creds nats-config` and reload the external server\n", name, strings.Join(keys, ", "))
	case "list":
		all, err := auth.Issued()
		if err != nil {
			return fail(err)
		}
		for _, i := range all {
			fmt.Fprintf(stdout, "%-24s %-10s %s %s %s\n", i.Name, i.Role, i.PublicKey, i.IssuedAt.Format(time.RFC3339), strings.Join(i.Vendors, ","))
		}
	}
	return 0
}

// writeSecret writes b to a new 0600 file at path, or to stdout when path is empty.
func writeSecret(path string, b []byte, stdout io.Writer) error {
	if path == "" {
		_, err := stdout.Write(b)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: give another --out", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// dataDirOr returns dir, else $KILLSWITCH_DATA_DIR, else ./killswitch-data.
func dataDirOr(dir string) string {
	if dir == "" {
		dir = os.Getenv(config.EnvDataDir)
	}
	if dir == "" {
		dir = "killswitch-data"
	}
	return dir
}

// defaultCreds gives a command that connects to the service's NATS the data
// directory's credentials of role when none are given (--nats-creds, --nats-nkey) and
// that file exists.
func defaultCreds(o *natsconn.Options, dataDir string, role embeddednats.Role) {
	if o.CredsFile != "" || o.NKeyFile != "" {
		return
	}
	p := embeddednats.CredsFile(dataDirOr(dataDir), role)
	if _, err := os.Stat(p); err == nil {
		o.CredsFile = filepath.Clean(p)
	}
}
