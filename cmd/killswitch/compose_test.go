package main

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/nats-io/nats-server/v2/server"
)

// loadCompose loads the repository's compose file as `docker compose` would, with no
// Docker engine.
func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	var envs []string
	for k, v := range env {
		envs = append(envs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
		cli.WithWorkingDirectory("../.."), cli.WithEnv(envs), cli.WithName("killswitch"))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func TestComposeMatchesTheService(t *testing.T) {
	if _, err := loadCompose(t, nil); err == nil || !strings.Contains(err.Error(), "KILLSWITCH_API_TOKEN") {
		t.Fatalf("without KILLSWITCH_API_TOKEN the compose file must refuse to load, got %v", err)
	}
	p, err := loadCompose(t, map[string]string{"KILLSWITCH_API_TOKEN": "0123456789abcdef0123"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nats", "vault", "killswitch", "telemetry-generator"} {
		if _, err := p.GetService(name); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
	}
	ks, _ := p.GetService("killswitch")
	natsSvc, _ := p.GetService("nats")
	vault, _ := p.GetService("vault")

	// The service's environment uses the variables the service reads, pointing at the
	// other services on their container ports.
	env := map[string]string{}
	for k, v := range ks.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	for _, k := range []string{config.EnvNATSURL, config.EnvVaultAddr, config.EnvVaultToken, config.EnvAPIToken, config.EnvHTTPListen, config.EnvDataDir} {
		if env[k] == "" {
			t.Errorf("killswitch environment lacks %s", k)
		}
	}
	checkURL := func(name, raw, host string, port uint32) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() != host || u.Port() != strconv.Itoa(int(port)) {
			t.Errorf("%s = %q, want host %s port %d", name, raw, host, port)
		}
	}
	checkURL(config.EnvNATSURL, env[config.EnvNATSURL], "nats", 4222)
	checkURL(config.EnvVaultAddr, env[config.EnvVaultAddr], "vault", 8200)
	if !hasPort(natsSvc, 4222) || !hasPort(vault, 8200) {
		t.Error("nats must publish 4222 and vault 8200")
	}
	_, httpPort, _ := net.SplitHostPort(env[config.EnvHTTPListen])
	hp, _ := strconv.Atoi(httpPort)
	if !hasPort(ks, uint32(hp)) {
		t.Errorf("killswitch listens on %s but does not publish that port", env[config.EnvHTTPListen])
	}
	for _, s := range p.Services {
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes %s:%s beyond loopback", s.Name, port.HostIP, port.Published)
			}
		}
	}
	// The killswitch command is this binary's: run --config <a file mounted into the
	// container>, and that file is a valid configuration.
	if len(ks.Command) < 3 || ks.Command[0] != "run" || ks.Command[1] != "--config" {
		t.Fatalf("killswitch command %v", ks.Command)
	}
	var mounted string
	for _, v := range ks.Volumes {
		if v.Target == ks.Command[2] {
			mounted = v.Source
		}
	}
	if mounted == "" {
		t.Fatalf("the config %s is not mounted", ks.Command[2])
	}
	cfg, err := config.Load(mounted)
	if err != nil {
		t.Fatalf("mounted config: %v", err)
	}
	if cfg.Service.DataDir != env[config.EnvDataDir] {
		t.Errorf("data_dir %q vs %s %q", cfg.Service.DataDir, config.EnvDataDir, env[config.EnvDataDir])
	}
	if _, ok := commands()[ks.Command[0]]; !ok {
		t.Fatalf("unknown subcommand %s", ks.Command[0])
	}
	gen, _ := p.GetService("telemetry-generator")
	if gen.Command[0] != "generate" || !slices.Contains(gen.Command, "nats://nats:4222") {
		t.Errorf("generator command %v", gen.Command)
	}
	if _, ok := ks.DependsOn["nats"]; !ok {
		t.Error("killswitch must depend on nats")
	}

	// The NATS configuration: JetStream on file storage with sync always (M5).
	var conf string
	for _, v := range natsSvc.Volumes {
		if strings.HasSuffix(v.Target, ".conf") {
			conf = v.Source
		}
	}
	if conf == "" || !slices.Contains(natsSvc.Command, "/etc/nats/nats.conf") {
		t.Fatalf("nats is not started with the mounted configuration: %v", natsSvc.Command)
	}
	// It includes the authorization `killswitch creds nats-config` writes (nats-auth).
	conf = natsConfWithAuth(t, conf)
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(conf), err)
	}
	if len(opts.TrustedOperators) != 1 || opts.SystemAccount == "" {
		t.Fatalf("nats.conf: no authorization (trusted operators %d)", len(opts.TrustedOperators))
	}
	if !opts.JetStream || !opts.SyncAlways || opts.StoreDir == "" || opts.Port != 4222 {
		t.Fatalf("nats.conf: jetstream %v, sync always %v, store %q, port %d", opts.JetStream, opts.SyncAlways, opts.StoreDir, opts.Port)
	}
}

func hasPort(s types.ServiceConfig, target uint32) bool {
	for _, p := range s.Ports {
		if p.Target == target {
			return true
		}
	}
	return false
}

func TestComposeRejectsBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "docker-compose.yml")
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", "services:\n  a:\n    image: x\n    colour: red\n", "colour"},
		{"undefined dependency", "services:\n  a:\n    image: x\n    depends_on: [b]\n", "b"},
	} {
		if err := os.WriteFile(bad, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		opts, err := cli.NewProjectOptions([]string{bad}, cli.WithWorkingDirectory(dir), cli.WithName("x"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := opts.LoadProject(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
