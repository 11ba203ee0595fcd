// Command devvault runs a real HashiCorp Vault (v1.14.2, MPL-2.0) dev server for
// Killswitch's tests and demo: one unseal key, a fixed root token, KV v2 at secret/,
// AppRole at auth/approle and the database secrets engine at database/ with the
// PostgreSQL plugin running in-process.
//
// Storage is in memory unless -storage DIR is given; then Vault's file backend keeps the
// data in DIR/data and the unseal key and root token in DIR/devvault-state.json (0600), so
// a stop and start keeps the state. When the server is ready it prints exactly one line,
// "devvault listening on http://ADDR", on standard output. SIGTERM or SIGINT stop it
// cleanly with exit status 0.
//
// This is its own Go module: Vault's dependency graph does not build together with the
// root module's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run parses args, serves until a signal arrives and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devvault", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8200", "listen address (loopback only unless -allow-remote; port 0 picks a free port)")
	fs.StringVar(&cfg.rootToken, "root-token", "root", "fixed root token id")
	fs.StringVar(&cfg.storageDir, "storage", "", "directory for persistent file storage (default: in memory)")
	fs.StringVar(&cfg.logLevel, "log-level", "error", "log level: trace, debug, info, warn, error, off")
	fs.BoolVar(&cfg.allowRemote, "allow-remote", false, "allow a non-loopback -addr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "devvault: unexpected arguments: %v\n", fs.Args())
		return 2
	}
	level := hclog.LevelFromString(cfg.logLevel)
	if level == hclog.NoLevel {
		fmt.Fprintf(stderr, "devvault: invalid -log-level %q\n", cfg.logLevel)
		return 2
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "devvault", Level: level, Output: stderr})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv, err := startServer(ctx, cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "devvault: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "devvault listening on http://%s\n", srv.addr())

	status := 0
	select {
	case <-ctx.Done():
	case err := <-srv.served:
		if !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(stderr, "devvault: serve: %v\n", err)
			status = 1
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.shutdown(shutdownCtx); err != nil {
		fmt.Fprintf(stderr, "devvault: shutdown: %v\n", err)
		return 1
	}
	return status
}
