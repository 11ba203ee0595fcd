package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The exit codes of the commands that talk to the API (incidents, approvals, approve,
// reject, veto, pause, resume, status).
const (
	exitOK        = 0 // done
	exitFailed    = 1 // the API could not be reached, or failed (5xx), or answered nonsense
	exitUsage     = 2 // a usage error
	exitAuth      = 3 // 401 (no or a wrong token) or 403 (the user's role is too low)
	exitNotFound  = 4 // 404: no such incident or action
	exitConflict  = 5 // 409 or 410: already decided, window ended, approval window closed
	defaultAPIURL = "http://127.0.0.1:8080"
)

// apiExitCodes documents the exit codes every API command shares.
const apiExitCodes = `The token: $` + config.EnvAPIToken + `, or --token-file (killswitch users add prints one).

Exit codes: 0 done; 1 the API is unreachable or failed; 2 usage error; 3 not
authenticated (401) or forbidden by your role (403); 4 not found (404); 5 conflict:
already decided, veto window over, approval window closed (409, 410).`

// apiFlags are the flags every API command takes.
type apiFlags struct {
	api, tokenFile string
	asJSON         bool
	timeout        time.Duration
}

// register adds the shared flags to fs.
func (f *apiFlags) register(fs *pflag.FlagSet, getenv func(string) string) {
	def := getenv(envAPI)
	if def == "" {
		def = defaultAPIURL
	}
	fs.StringVar(&f.api, "api", def, "the service's API base URL; $"+envAPI+" when set, else "+defaultAPIURL)
	fs.StringVar(&f.tokenFile, "token-file", "", "read the bearer token from this file (default $"+config.EnvAPIToken+")")
	fs.BoolVar(&f.asJSON, "json", false, "print the API's JSON, for scripts")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "give up after this long")
}

// apiCmd builds a command that talks to the API: the shared flags, positional
// arguments checked by args, the client built from the flags (a bad --api is a usage
// error), then run.
func apiCmd(getenv func(string) string, use, short, long string, args cobra.PositionalArgs,
	run func(ctx context.Context, f *apiFlags, c *apiClient, args []string, stdout, stderr io.Writer) int) *cobra.Command {
	var f apiFlags
	c := &cobra.Command{
		Use: use, Short: short, Long: longHelp(long, apiExitCodes), Args: args,
		RunE: exits(func(ctx context.Context, c *cobra.Command, args []string) int {
			client, err := f.client()
			if err != nil {
				fmt.Fprintf(c.ErrOrStderr(), "%s: %v\n", c.CommandPath(), err)
				return exitUsage
			}
			return run(ctx, &f, client, args, c.OutOrStdout(), c.ErrOrStderr())
		}),
	}
	f.register(c.Flags(), getenv)
	return c
}

// newOnCallCmds are the commands that talk to a running service's API.
func newOnCallCmds(getenv func(string) string) []*cobra.Command {
	cmds := []*cobra.Command{
		newIncidentsCmd(getenv),
		apiCmd(getenv, "approvals [flags]", "list the actions waiting for an approval and the running veto windows",
			approvalsHelp, cobra.NoArgs, runApprovals),
		newDecideCmd(getenv, "approve", "approved", "approve a held action: it runs once", "Runs a held action, once"),
		newDecideCmd(getenv, "reject", "rejected", "reject a held action: it never runs", "Drops a held action; nothing runs"),
		newDecideCmd(getenv, "veto", "vetoed", "veto an action in its veto window: it never runs", "Cancels an action announced in a veto window, before it runs"),
		newPauseCmd(getenv),
		apiCmd(getenv, "resume [flags]", "resume automation", pauseHelp, cobra.NoArgs, runResume),
		apiCmd(getenv, "status [flags]", "mode, pause, breaker, ledger, storm and what waits on people",
			statusHelp, cobra.NoArgs, runStatus),
	}
	return append(cmds, newKillCmds(getenv)...)
}

// client builds the API client from the flags and the environment.
func (f *apiFlags) client() (*apiClient, error) {
	u, err := url.Parse(f.api)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: give an http:// or https:// URL", f.api)
	}
	if f.timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	tok := os.Getenv(config.EnvAPIToken)
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	return &apiClient{base: strings.TrimRight(u.String(), "/"), token: tok, timeout: f.timeout,
		http: &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}}, nil
}

// apiClient calls the service's HTTP API with a bearer token.
type apiClient struct {
	base, token string
	timeout     time.Duration
	http        *http.Client
}

// apiError is an answer other than 2xx, explained in one line.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

// exitCode maps an error of the client to the documented exit code.
func exitCode(err error) int {
	var ae *apiError
	if !errors.As(err, &ae) {
		return exitFailed
	}
	switch ae.status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitAuth
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusConflict, http.StatusGone:
		return exitConflict
	}
	return exitFailed
}

// do sends method path with body (JSON, when not nil) and decodes a 2xx answer into out
// (when not nil); raw, when not nil, receives the answer's bytes.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any, raw *[]byte) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the API at %s (is `killswitch run` listening there? see --api): %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if api := misdirectedTo(resp.StatusCode, b); api != "" && api != c.base {
		// In a cluster, another instance owns the vendor: the request goes there, once.
		owner := *c
		owner.base = strings.TrimRight(api, "/")
		return owner.do(ctx, method, path, body, out, raw)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return c.explain(resp.StatusCode, b)
	}
	if raw != nil {
		*raw = b
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: the answer is not what this killswitch understands: %w", method, path, err)
		}
	}
	return nil
}

// misdirectedTo returns the owner's API of a 421 answer (httpapi.Misdirected), else "".
func misdirectedTo(status int, body []byte) string {
	if status != http.StatusMisdirectedRequest {
		return ""
	}
	var e struct {
		API string `json:"api"`
	}
	if json.Unmarshal(body, &e) != nil || (!strings.HasPrefix(e.API, "http://") && !strings.HasPrefix(e.API, "https://")) {
		return ""
	}
	return e.API
}

// explain turns an error answer into one line that says what to do.
func (c *apiClient) explain(status int, body []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	msg := strings.Join(strings.Fields(e.Error), " ")
	if msg == "" {
		msg = http.StatusText(status)
	}
	switch status {
	case http.StatusUnauthorized:
		if c.token == "" {
			msg = "not authenticated: no token (set $" + config.EnvAPIToken + " or --token-file; `killswitch users add NAME --role viewer|approver|admin` prints one)"
		} else {
			msg = "not authenticated: the service does not know this token (a removed user, or a rotated token)"
		}
	case http.StatusForbidden:
		msg = "forbidden by your role: " + strings.TrimPrefix(msg, "forbidden: ")
	case http.StatusNotFound:
		msg = "not found: " + strings.TrimPrefix(msg, "not found: ")
	case http.StatusConflict:
		msg = "too late or already done: " + strings.TrimPrefix(msg, "conflict: ")
	case http.StatusGone:
		msg = "too late: " + strings.TrimPrefix(msg, "expired: ")
	default:
		msg = fmt.Sprintf("the API answered %d: %s", status, msg)
	}
	return &apiError{status: status, msg: msg}
}

// fail prints err for command name in one line and returns its exit code.
func fail(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "killswitch %s: %v\n", name, err)
	return exitCode(err)
}

// call sends a request and decodes the answer into out. With --json it prints the
// answer as it came, for scripts. done reports that the command is over, with its
// exit status: after printing the JSON, or after reporting an error on stderr as name.
func (c *apiClient) call(ctx context.Context, f *apiFlags, name, method, path string, body, out any, stdout, stderr io.Writer) (code int, done bool) {
	var raw []byte
	if err := c.do(ctx, method, path, body, out, &raw); err != nil {
		return fail(stderr, name, err), true
	}
	if f.asJSON {
		printJSON(stdout, raw)
		return exitOK, true
	}
	return exitOK, false
}

// printJSON writes the API's answer as it came, for scripts.
func printJSON(w io.Writer, raw []byte) {
	w.Write(bytes.TrimSpace(raw))
	fmt.Fprintln(w)
}

// ago renders a duration for people: "1m30s", rounded to the second.
func ago(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}
