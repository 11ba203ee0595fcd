package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

// newHealthcheckCmd is `killswitch healthcheck`.
func newHealthcheckCmd() *cobra.Command {
	var target string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "healthcheck [--url URL] [--timeout DUR]",
		Short: "ask the service's /readyz once: exit 0 if ready (container health checks)",
		Long: longHelp(`Asks URL (default http://127.0.0.1:8080/readyz) once. For container health checks on images
without a shell or an HTTP client (distroless):
  healthcheck: {test: ["CMD", "/usr/local/bin/killswitch", "healthcheck"]}`,
			`Exit status: 0 it answered 2xx within the timeout; 1 otherwise (the reason on stderr);
2 usage error.`),
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected arguments %v", args)
			}
			return nil
		},
		RunE: exits(func(ctx context.Context, c *cobra.Command, _ []string) int {
			return runHealthcheck(ctx, target, timeout, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	c.Flags().StringVar(&target, "url", "http://127.0.0.1:8080/readyz", "the URL to ask (http or https)")
	c.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	return c
}

// runHealthcheck implements `killswitch healthcheck`.
func runHealthcheck(ctx context.Context, target string, timeout time.Duration, stdout, stderr io.Writer) int {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "killswitch healthcheck: --url %q: give an http:// or https:// URL\n", target)
		return 2
	}
	if timeout <= 0 {
		fmt.Fprintln(stderr, "killswitch healthcheck: --timeout must be positive")
		return 2
	}
	if err := probe(ctx, u.String(), timeout); err != nil {
		fmt.Fprintf(stderr, "killswitch healthcheck: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// probe asks target once and returns nil when it answers 2xx within timeout.
func probe(ctx context.Context, target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", target, err)
	}
	// No proxy: the target is the container's own port.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s: %s", target, resp.Status, body)
	}
	return nil
}
