// Command prebuild builds the dev Vault (cmd/devvault) into the user cache, printing
// progress, so that CI shows the slow first build in its log instead of inside a test.
// It prints the binary's path on success. Run it from anywhere inside the repository:
//
//	go run ./internal/devvault/prebuild
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/killswitch-dev/killswitch/internal/devvault"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	bin, err := devvault.Build(ctx, devvault.BuildOptions{Progress: os.Stderr})
	if err != nil {
		fmt.Fprintf(os.Stderr, "prebuild: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(bin)
}
