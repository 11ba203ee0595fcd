package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// runLedger implements `killswitch ledger verify`.
func runLedger(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: killswitch ledger verify [--nats URL] [--stream NAME]")
		return 2
	}
	fs := flag.NewFlagSet("ledger verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nopts natsconn.Options
	nopts.RegisterFlags(fs, "nats://127.0.0.1:4222")
	stream := fs.String("stream", "KILLSWITCH_LEDGER", "ledger stream name")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	nopts.Name = "killswitch-ledger-verify"
	nc, err := nopts.Connect(zap.NewNop())
	if err != nil {
		fmt.Fprintln(stderr, "killswitch ledger verify:", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintln(stderr, "killswitch ledger verify:", err)
		return 1
	}
	st, err := js.Stream(ctx, *stream)
	if err != nil {
		fmt.Fprintf(stderr, "killswitch ledger verify: stream %s: %v\n", *stream, err)
		return 1
	}
	res, err := ledger.Verify(ledgerjs.ReadStream(ctx, st))
	switch {
	case errors.Is(err, ledger.ErrBroken):
		fmt.Fprintf(stdout, "BROKEN after %d intact records: %v\n", res.Records, err)
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "killswitch ledger verify:", err)
		return 1
	}
	fmt.Fprintf(stdout, "ok: %d records, chain intact, head %s\n", res.Records, res.Head)
	return 0
}
