// Command nab runs the Killswitch detectors over the Numenta Anomaly Benchmark corpus
// and writes NAB result files:
//
//	go run ./cmd/nab -data ../shared/nab/data -out RESULTS
//
// writes RESULTS/killswitch/<category>/killswitch_<file>.csv, to be scored with NAB's
// scorer at the fixed threshold 0.5.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/detectors/nab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nab:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: nab -data DIR [-out DIR]")

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nab", flag.ContinueOnError)
	data := fs.String("data", "", "NAB data directory (containing <category>/<file>.csv)")
	out := fs.String("out", "RESULTS", "results directory; files go to OUT/killswitch/<category>/")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if *data == "" || fs.NArg() > 0 {
		return errUsage
	}
	res, err := nab.Run(ctx, *data, *out, detectors.DefaultModelParams())
	if err != nil {
		return err
	}
	rows, dets := 0, 0
	for _, r := range res {
		rows += r.Rows
		dets += r.Detections
	}
	_, err = fmt.Fprintf(stdout, "nab: %d files, %d rows, %d detections (score >= 0.5) written under %s\n", len(res), rows, dets, *out)
	return err
}
