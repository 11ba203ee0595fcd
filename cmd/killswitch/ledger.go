package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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
	"go.uber.org/zap"
)

const ledgerUsage = `usage:
  killswitch ledger verify [--nats URL] [--stream NAME] [--checkpoints NAME]
                           [--key-file FILE | --data-dir DIR | --no-key] [--json]
  killswitch ledger seal   --by NAME [--reason TEXT] [--nats URL] [--stream NAME]
                           [--checkpoints NAME] [--key-file FILE | --data-dir DIR]

The MAC key is read from --key-file, else $` + ledger.EnvKey + `, else DIR/` + ledger.KeyFile + `
(DIR: --data-dir, $` + config.EnvDataDir + ` or ./killswitch-data).`

// runLedger implements `killswitch ledger verify` and `killswitch ledger seal`.
func runLedger(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "verify" && args[0] != "seal") {
		fmt.Fprintln(stderr, ledgerUsage)
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("ledger "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nopts natsconn.Options
	nopts.RegisterFlags(fs, "nats://127.0.0.1:4222")
	stream := fs.String("stream", "KILLSWITCH_LEDGER", "ledger stream name")
	checkpoints := fs.String("checkpoints", "KILLSWITCH_LEDGER_CHECKPOINTS", "checkpoint stream name")
	keyFile := fs.String("key-file", "", "the ledger's MAC key file (hex, base64 or raw)")
	dataDir := fs.String("data-dir", "", "the service's data directory, holding "+ledger.KeyFile)
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	var noKey, asJSON *bool
	var by, reason *string
	if cmd == "verify" {
		noKey = fs.Bool("no-key", false, "check hashes and links only: MACs and checkpoints are NOT checked")
		asJSON = fs.Bool("json", false, "print the report as JSON")
	} else {
		by = fs.String("by", "", "who seals (required)")
		reason = fs.String("reason", "", "why, for the record")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
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
