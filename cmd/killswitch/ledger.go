package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// ledgerOptions are the flags of `killswitch ledger verify` and `killswitch ledger seal`.
type ledgerOptions struct {
	nats                                      natsconn.Options
	stream, checkpoints, keyFile, dataDir, by string
	reason                                    string
	timeout                                   time.Duration
	noKey, asJSON                             bool
}

const ledgerKeyHelp = `The MAC key is read from --key-file, else $` + ledger.EnvKey + `, else DIR/` + ledger.KeyFile + `
(DIR: --data-dir, $` + config.EnvDataDir + ` or ./killswitch-data).`

// newLedgerCmd is `killswitch ledger {verify,seal}`.
func newLedgerCmd(getenv func(string) string) *cobra.Command {
	c := &cobra.Command{
		Use:   "ledger",
		Short: "verify the hash-chained audit ledger; seal its breaks",
		Long:  longHelp("The ledger is the append-only, hash-chained, MAC'd audit log in JetStream.", ledgerKeyHelp),
	}
	c.AddCommand(newLedgerSubCmd("verify", getenv), newLedgerSubCmd("seal", getenv))
	return c
}

// newLedgerSubCmd builds `ledger verify` or `ledger seal`.
func newLedgerSubCmd(cmd string, getenv func(string) string) *cobra.Command {
	var o ledgerOptions
	c := &cobra.Command{
		Args: cobra.NoArgs,
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			return runLedger(ctx, cmd, &o, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	if cmd == "verify" {
		c.Use, c.Short = "verify [flags]", "check the ledger's chain, MACs and checkpoints"
		c.Long = longHelp(`Reads the whole ledger and checks every record's hash, link and MAC, and the checkpoints.
The first line of the report is the verdict ("ok: N records, chain intact, head H"),
then every break, sealed or not.`, ledgerKeyHelp,
			`Exit status: 0 the chain is intact (every break sealed); 1 an unsealed break, or the ledger
could not be read; 2 usage error.`)
	} else {
		c.Use, c.Short = "seal --by NAME [--reason TEXT] [flags]", "seal the ledger's breaks after looking at them: a new epoch"
		c.Long = longHelp(`Appends a seal record that acknowledges the ledger's unsealed breaks (after someone looked
at them: killswitch ledger verify) and starts a new epoch; later verifications report the
breaks as sealed. Seals with the service's identity.`, ledgerKeyHelp,
			`Exit status: 0 sealed, or nothing to seal; 1 failed; 2 usage error.`)
	}
	fs := c.Flags()
	registerNATSFlags(fs, &o.nats, getenv, defaultNATSURL, defaultNATSURL+", where killswitch run's embedded server listens")
	fs.StringVar(&o.stream, "ledger-stream", "KILLSWITCH_LEDGER", "ledger stream name")
	deprecatedAlias(fs, "stream", "ledger-stream")
	fs.StringVar(&o.checkpoints, "checkpoints", "KILLSWITCH_LEDGER_CHECKPOINTS", "checkpoint stream name")
	fs.StringVar(&o.keyFile, "key-file", "", "the ledger's MAC key file (hex, base64 or raw)")
	fs.StringVar(&o.dataDir, "data-dir", "", "the service's data directory, holding "+ledger.KeyFile+" and the NATS credentials")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	if cmd == "verify" {
		fs.BoolVar(&o.noKey, "no-key", false, "check hashes and links only: MACs and checkpoints are NOT checked")
		fs.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	} else {
		fs.StringVar(&o.by, "by", "", "who seals (required)")
		fs.StringVar(&o.reason, "reason", "", "why, for the record")
	}
	_ = c.MarkFlagDirname("data-dir")
	return c
}

// runLedger implements `killswitch ledger verify` and `killswitch ledger seal`.
func runLedger(ctx context.Context, cmd string, o *ledgerOptions, stdout, stderr io.Writer) int {
	nopts := o.nats
	stream, checkpoints, keyFile, dataDir, timeout := &o.stream, &o.checkpoints, &o.keyFile, &o.dataDir, &o.timeout
	var noKey, asJSON *bool
	var by, reason *string
	if cmd == "verify" {
		noKey, asJSON = &o.noKey, &o.asJSON
	} else {
		by, reason = &o.by, &o.reason
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "killswitch ledger %s: %v\n", cmd, err)
		return 1
	}
	if by != nil && *by == "" {
		fmt.Fprintln(stderr, "killswitch ledger seal: --by is required")
		return 2
	}
	var key *ledger.Key
	if noKey == nil || !*noKey {
		k, err := ledgerKey(*keyFile, *dataDir)
		if err != nil {
			return fail(err)
		}
		key = k
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	nopts.Name = "killswitch-ledger-" + cmd
	if cmd == "seal" { // sealing appends to the ledger: the service's identity
		defaultCreds(&nopts, *dataDir, embeddednats.RoleService)
	} else {
		defaultCreds(&nopts, *dataDir, embeddednats.RoleOperator)
	}
	nc, err := nopts.Connect(zap.NewNop())
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	cfg := ledgerjs.StreamConfig{Name: *stream, Checkpoints: *checkpoints, Key: key}
	if cmd == "seal" {
		rec, rep, err := ledgerjs.Seal(ctx, js, cfg, *by, *reason)
		if errors.Is(err, ledgerjs.ErrNothingToSeal) {
			fmt.Fprintf(stdout, "nothing to seal: %d records, no unsealed break, head %s\n", rep.Records, rep.Head)
			return 0
		}
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "sealed %d breaks: epoch %d, seal record %d anchored on record %d\n", len(rep.Unsealed()), rep.Epochs+1, rec.Seq, rec.Seq-1)
		for _, b := range rep.Unsealed() {
			fmt.Fprintf(stdout, "  sealed: %s\n", b)
		}
		return 0
	}
	rep, err := ledgerjs.Audit(ctx, js, cfg)
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fail(err)
		}
	} else {
		printReport(stdout, &rep, key)
	}
	if !rep.Intact() {
		return 1
	}
	return 0
}

// printReport writes a verification report for a human: the verdict on the first line
// ("ok: N records, chain intact, head H" for a chain without unsealed breaks), then
// every break, sealed or not.
func printReport(w io.Writer, rep *ledger.Report, key *ledger.Key) {
	unsealed := rep.Unsealed()
	if len(unsealed) == 0 {
		fmt.Fprintf(w, "ok: %d records, chain intact, head %s\n", rep.Records, rep.Head)
	} else {
		fmt.Fprintf(w, "BROKEN: %d unsealed breaks; %d good records, head record %d %s\n", len(unsealed), rep.Records, rep.HeadSeq, rep.Head)
	}
	if key == nil {
		fmt.Fprintln(w, "  MACs and checkpoints NOT checked (--no-key): a forged or cut-off chain would pass")
	} else {
		fmt.Fprintf(w, "  MACs checked (key %s); %d checkpoints compared; %d seals\n", key.ID(), rep.Checkpoints, rep.Epochs)
	}
	if rep.Unauthenticated > 0 {
		fmt.Fprintf(w, "  %d records without a MAC (written before the ledger was keyed): unauthenticated\n", rep.Unauthenticated)
	}
	for _, b := range rep.Breaks {
		if b.SealedBy != 0 {
			fmt.Fprintf(w, "  sealed by record %d: %s\n", b.SealedBy, b)
		} else {
			fmt.Fprintf(w, "  BREAK: %s\n", b)
		}
	}
	if len(unsealed) > 0 {
		fmt.Fprintln(w, "  after looking at the breaks: killswitch ledger seal --by NAME --reason TEXT")
	}
}

// ledgerKey finds the ledger's MAC key: the key file, else the environment, else the
// data directory's key file.
func ledgerKey(keyFile, dataDir string) (*ledger.Key, error) {
	if keyFile != "" {
		return ledger.LoadKeyFile(keyFile)
	}
	if v := os.Getenv(ledger.EnvKey); v != "" {
		k, err := ledger.ParseKey(v)
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", ledger.EnvKey, err)
		}
		return k, nil
	}
	if dataDir == "" {
		dataDir = os.Getenv(config.EnvDataDir)
	}
	if dataDir == "" {
		dataDir = "killswitch-data"
	}
	k, err := ledger.LoadKeyFile(filepath.Join(dataDir, ledger.KeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: give --key-file, $%s or --data-dir (or --no-key to check hashes and links only)", ledger.ErrNoKey, ledger.EnvKey)
	}
	return k, err
}
