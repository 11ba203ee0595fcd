package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite docs/cli.md from the command tree")

// noEnv is an environment with nothing set: the flags' natural defaults.
func noEnv(string) string { return "" }

// commandPaths lists the argument paths of every visible command under root, root
// included (the empty path), in tree order.
func commandPaths(root *cobra.Command) [][]string {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		if c.Hidden {
			return
		}
		paths = append(paths, path)
		for _, s := range c.Commands() {
			walk(s, append(slices.Clone(path), s.Name()))
		}
	}
	walk(root, nil)
	return paths
}

// usageLine is what a command's help must show as its usage.
func usageLine(c *cobra.Command) string {
	if c.Runnable() && !c.DisableFlagParsing {
		return c.UseLine()
	}
	return c.CommandPath() + " [command]"
}

// TestCommandTree walks every command and subcommand: --help, -h and `help PATH` exit
// 0 and print that command's usage on stdout; an unknown flag exits 2 with one line and
// a hint on stderr; every flag has a usage string.
func TestCommandTree(t *testing.T) {
	root := newRootCmd(noEnv)
	paths := commandPaths(root)
	if len(paths) < 30 {
		t.Fatalf("only %d commands in the tree", len(paths))
	}
	ctx := context.Background()
	for _, path := range paths {
		name := strings.Join(append([]string{"killswitch"}, path...), " ")
		t.Run(name, func(t *testing.T) {
			c, _, err := root.Find(path)
			if err != nil {
				t.Fatal(err)
			}
			var help string
			for _, args := range [][]string{append(slices.Clone(path), "--help"), append(slices.Clone(path), "-h"), append([]string{"help"}, path...)} {
				code, out, errOut := dispatch3(ctx, args...)
				if code != 0 || !strings.Contains(out, "Usage:\n  "+usageLine(c)) || errOut != "" {
					t.Fatalf("%v: exit %d, want 0 and the usage %q on stdout\nstdout:\n%s\nstderr:\n%s", args, code, usageLine(c), out, errOut)
				}
				if help != "" && out != help {
					t.Errorf("%v prints another help than %s --help", args, name)
				}
				help = out
			}
			code, out, errOut := dispatch3(ctx, append(slices.Clone(path), "--no-such-flag")...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if code != 2 || out != "" || len(lines) != 2 || !strings.Contains(lines[0], "unknown flag: --no-such-flag") ||
				lines[1] != "Run '"+c.CommandPath()+" --help' for usage." {
				t.Errorf("unknown flag: exit %d, want 2 with an error and a hint\nstdout: %s\nstderr: %s", code, out, errOut)
			}
			c.Flags().VisitAll(func(f *pflag.Flag) {
				if strings.TrimSpace(f.Usage) == "" {
					t.Errorf("--%s has no usage string", f.Name)
				}
			})
		})
	}
}

// TestNATSFlags: every command that uses NATS takes the same six flags with the same
// usage, and --nats defaults to $KILLSWITCH_NATS_URL, else to the command's natural
// default, which its usage names.
func TestNATSFlags(t *testing.T) {
	natural := map[string]string{ // the commands that use NATS, and --nats without the environment
		"killswitch run":           "",
		"killswitch replay":        defaultNATSURL,
		"killswitch generate":      "",
		"killswitch ledger verify": defaultNATSURL,
		"killswitch ledger seal":   defaultNATSURL,
	}
	names := []string{"nats", "nats-creds", "nats-nkey", "nats-tls-ca", "nats-tls-cert", "nats-tls-key"}
	const fromEnv = "nats://nats-1.example:4222,nats://nats-2.example:4222"
	for _, tc := range []struct {
		name string
		env  func(string) string
		want func(cmd string) string
	}{
		{"natural defaults", noEnv, func(cmd string) string { return natural[cmd] }},
		{"$" + envNATSURL, func(k string) string {
			if k == envNATSURL {
				return fromEnv
			}
			return ""
		}, func(string) string { return fromEnv }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			usages := map[string]string{}
			var seen []string
			walkCommands(newRootCmd(tc.env), func(c *cobra.Command) {
				fs := c.Flags()
				if fs.Lookup("nats") == nil {
					return
				}
				cmd := c.CommandPath()
				seen = append(seen, cmd)
				for _, n := range names {
					f := fs.Lookup(n)
					switch {
					case f == nil:
						t.Errorf("%s has --nats but not --%s", cmd, n)
						continue
					case f.Hidden || f.Deprecated != "":
						t.Errorf("%s: --%s is hidden or deprecated", cmd, n)
					case n != "nats" && f.DefValue != "":
						t.Errorf("%s: --%s defaults to %q, want none", cmd, n, f.DefValue)
					case n != "nats" && usages[n] != "" && usages[n] != f.Usage:
						t.Errorf("%s: --%s %q, elsewhere %q", cmd, n, f.Usage, usages[n])
					}
					usages[n] = f.Usage
				}
				f := fs.Lookup("nats")
				if f.DefValue != tc.want(cmd) {
					t.Errorf("%s: --nats defaults to %q, want %q", cmd, f.DefValue, tc.want(cmd))
				}
				if !strings.Contains(f.Usage, "$"+envNATSURL+" when set, else ") {
					t.Errorf("%s: --nats does not document its default rule: %q", cmd, f.Usage)
				}
			})
			if want := slices.Sorted(func(yield func(string) bool) {
				for k := range natural {
					if !yield(k) {
						return
					}
				}
			}); !slices.Equal(slices.Sorted(slices.Values(seen)), want) {
				t.Errorf("--nats on %v, want %v", seen, want)
			}
		})
	}
}

// TestLogLevel: every command that logs takes --log-level with one default:
// $KILLSWITCH_LOG_LEVEL, else info.
func TestLogLevel(t *testing.T) {
	for _, tc := range []struct {
		env, want string
	}{{"", defaultLogLevel}, {"debug", "debug"}} {
		var seen []string
		walkCommands(newRootCmd(func(k string) string {
			if k == envLogLevel {
				return tc.env
			}
			return ""
		}), func(c *cobra.Command) {
			if f := c.Flags().Lookup("log-level"); f != nil {
				seen = append(seen, c.CommandPath())
				if f.DefValue != tc.want || !strings.Contains(f.Usage, "$"+envLogLevel) {
					t.Errorf("%s --log-level: default %q (want %q), usage %q", c.CommandPath(), f.DefValue, tc.want, f.Usage)
				}
			}
		})
		if want := []string{"killswitch demo", "killswitch run"}; !slices.Equal(slices.Sorted(slices.Values(seen)), want) {
			t.Errorf("--log-level on %v, want %v", seen, want)
		}
	}
}

// TestDeprecatedFlags: the names that meant different things under one flag still work,
// set the new flag, are hidden from the help and print a notice on stderr only.
func TestDeprecatedFlags(t *testing.T) {
	for _, tc := range []struct {
		path           []string
		old, new, val  string
		helpMentionNew bool
	}{
		{[]string{"playbook", "test"}, "timeout", "test-timeout", "7s", true},
		{[]string{"playbook", "eval"}, "timeout", "eval-timeout", "7s", true},
		{[]string{"playbook", "check"}, "timeout", "eval-timeout", "7s", true},
		{[]string{"ledger", "verify"}, "stream", "ledger-stream", "OLD_LEDGER", true},
		{[]string{"ledger", "seal"}, "stream", "ledger-stream", "OLD_LEDGER", true},
	} {
		t.Run(strings.Join(tc.path, " ")+" --"+tc.old, func(t *testing.T) {
			c, _, err := newRootCmd(noEnv).Find(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			var notice bytes.Buffer
			c.Flags().SetOutput(&notice)
			if err := c.ParseFlags([]string{"--" + tc.old, tc.val}); err != nil {
				t.Fatal(err)
			}
			if got := c.Flags().Lookup(tc.new).Value.String(); got != tc.val {
				t.Errorf("--%s %s sets --%s to %q", tc.old, tc.val, tc.new, got)
			}
			if want := "Flag --" + tc.old + " has been deprecated, use --" + tc.new + "\n"; notice.String() != want {
				t.Errorf("notice %q, want %q", notice.String(), want)
			}
			code, out, _ := dispatch3(context.Background(), append(slices.Clone(tc.path), "--help")...)
			if code != 0 || strings.Contains(out, "--"+tc.old+" ") || !strings.Contains(out, "--"+tc.new+" ") {
				t.Errorf("help: exit %d; want --%s shown and --%s hidden:\n%s", code, tc.new, tc.old, out)
			}
		})
	}
	// Through the binary's entry: the notice is on stderr, the output stays clean.
	dir := t.TempDir()
	code, out, errOut := dispatch3(context.Background(), "playbook", "export", dir+"/lib")
	if code != 0 {
		t.Fatalf("export: %d %s", code, errOut)
	}
	code, out, errOut = dispatch3(context.Background(), "playbook", "check", "--timeout", "10s", "--json", dir+"/lib")
	if code != 0 || !strings.HasPrefix(out, "{") || !strings.Contains(errOut, "Flag --timeout has been deprecated, use --eval-timeout") {
		t.Errorf("playbook check --timeout: exit %d\nstdout: %.200s\nstderr: %s", code, out, errOut)
	}
}

// TestUsageErrors: what a mistyped command line gets.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{nil, 2, "", "Usage:\n  killswitch [command]"},
		{[]string{"frob"}, 2, "", "killswitch: unknown command \"frob\" for \"killswitch\"\nRun 'killswitch --help' for usage.\n"},
		{[]string{"versoin"}, 2, "", "Did you mean version? Run 'killswitch --help' for usage.\n"},
		{[]string{"--bogus"}, 2, "", "killswitch: unknown flag: --bogus\n"},
		{[]string{"help", "nope"}, 2, "", "unknown command \"nope\" for \"killswitch\""},
		{[]string{"help", "ledger", "nope"}, 2, "", "unknown command \"nope\" for \"killswitch ledger\""},
		{[]string{"ledger"}, 2, "", "killswitch ledger: give a command\n\nUsage:\n  killswitch ledger [command]"},
		{[]string{"ledger", "frob"}, 2, "", "killswitch ledger: unknown command \"frob\" for \"killswitch ledger\"\nRun 'killswitch ledger --help' for usage.\n"},
		{[]string{"ledger", "vrify"}, 2, "", "Did you mean verify? Run 'killswitch ledger --help' for usage.\n"},
		{[]string{"run", "now"}, 2, "", "killswitch run: unknown command \"now\" for \"killswitch run\"\n"},
		{[]string{"replay", "--speed", "fast"}, 2, "", "invalid argument \"fast\" for \"--speed\" flag"},
		{[]string{"approve"}, 2, "", "killswitch approve: want 1 argument(s), got 0\n"},
		{[]string{"version"}, 0, "killswitch dev\n", ""},
		{[]string{"--version"}, 0, "killswitch dev\n", ""},
		{[]string{"version", "--help"}, 0, "Usage:\n  killswitch version [flags]", ""},
		{[]string{"help", "run"}, 0, "Usage:\n  killswitch run [flags]", ""},
		// Flags written with one dash, as the standard library's flag package took them.
		{[]string{"healthcheck", "-url", "nats://x"}, 2, "", "--url \"nats://x\": give an http:// or https:// URL"},
		{[]string{"healthcheck", "-timeout=0s"}, 2, "", "--timeout must be positive"},
	} {
		code, out, errOut := dispatch3(context.Background(), tc.args...)
		if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) || (tc.stdout == "" && out != "") {
			t.Errorf("killswitch %v: exit %d, want %d\nstdout: %s\nstderr: %s\nwant stdout with %q, stderr with %q", tc.args, code, tc.code, out, errOut, tc.stdout, tc.stderr)
		}
	}
}

// TestCompatArgs: one-dash flags become two-dash ones when some command has that flag;
// values, negative numbers, shorthands and everything after -- are left alone.
func TestCompatArgs(t *testing.T) {
	root := newRootCmd(noEnv)
	for _, tc := range []struct{ in, want []string }{
		{[]string{"replay", "-telemetry", "a.ndjson", "-json=out.json"}, []string{"replay", "--telemetry", "a.ndjson", "--json=out.json"}},
		{[]string{"generate", "-attacks", "-1", "-out", "-"}, []string{"generate", "--attacks", "-1", "--out", "-"}},
		{[]string{"run", "-h"}, []string{"run", "-h"}},
		{[]string{"approve", "-zz", "--", "-comment"}, []string{"approve", "-zz", "--", "-comment"}},
	} {
		if got := compatArgs(root, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("compatArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCompletion: the shells' completion scripts, and completions from the tree.
func TestCompletion(t *testing.T) {
	ctx := context.Background()
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if code, out, errOut := dispatch3(ctx, "completion", sh); code != 0 || !strings.Contains(out, "killswitch") || len(out) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes\n%s", sh, code, len(out), errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "ledger", ""}, []string{"seal", "verify"}},
		{[]string{"__complete", "run", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
		{[]string{"__complete", "replay", "--format", ""}, []string{"json", "vpc", "ocsf", "zeek"}},
		{[]string{"__complete", "help", "play"}, []string{"playbook"}},
	} {
		code, out, _ := dispatch3(ctx, tc.args...)
		var got []string
		for _, l := range strings.Split(out, "\n") {
			if l != "" && !strings.HasPrefix(l, ":") {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
		}
		if code != 0 || !slices.Equal(got, tc.want) {
			t.Errorf("%v: exit %d, %q, want %q", tc.args, code, got, tc.want)
		}
	}
}

// TestCLIReference keeps docs/cli.md, the command reference, equal to the help of every
// command; go test -run TestCLIReference -update rewrites it.
func TestCLIReference(t *testing.T) {
	got := cliReference(t)
	path := filepath.Join("..", "..", "docs", "cli.md")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not the help of the command tree: go test ./cmd/killswitch -run TestCLIReference -update", path)
	}
}

// cliReference renders the help of every command as Markdown.
func cliReference(t *testing.T) []byte {
	t.Helper()
	root := newRootCmd(noEnv)
	var b bytes.Buffer
	b.WriteString("# The killswitch command reference\n\n" +
		"Generated from the command tree (`go generate ./cmd/killswitch`); the same text as `killswitch COMMAND --help`.\n" +
		"Defaults shown are those without the environment: `--nats` defaults to `$KILLSWITCH_NATS_URL` when set,\n" +
		"`--log-level` to `$KILLSWITCH_LOG_LEVEL`, `--api` to `$KILLSWITCH_API`.\n\n")
	paths := commandPaths(root)
	for _, path := range paths {
		c, _, _ := root.Find(path)
		fmt.Fprintf(&b, "- [%s](#%s)\n", c.CommandPath(), strings.ReplaceAll(c.CommandPath(), " ", "-"))
	}
	for _, path := range paths {
		c, _, _ := root.Find(path)
		code, out, errOut := dispatch3(context.Background(), append(slices.Clone(path), "--help")...)
		if code != 0 {
			t.Fatalf("%s --help: %d %s", c.CommandPath(), code, errOut)
		}
		fmt.Fprintf(&b, "\n## %s\n\n```\n%s```\n", c.CommandPath(), out)
	}
	return b.Bytes()
}
