package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/nats-io/nats-server/v2/server"
)

// The compose deployment: three NATS nodes, two Killswitch instances in cluster mode.
var (
	composeNATSNodes = []string{"nats1", "nats2", "nats3"}
	composeInstances = []string{"ks1", "ks2"}
)

// composeTestEnv is the environment the documented one-command start provides.
var composeTestEnv = map[string]string{
	"KILLSWITCH_API_TOKEN":  "0123456789abcdef0123",
	"NATS_CLUSTER_PASSWORD": "5eb63bbbe01eeed093cb22bb8f5acdc3",
}

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

// mustLoadCompose loads the compose file with composeTestEnv.
func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, composeTestEnv)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func serviceEnv(s types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// volumeAt returns the volume of s mounted at target.
func volumeAt(s types.ServiceConfig, target string) (types.ServiceVolumeConfig, bool) {
	for _, v := range s.Volumes {
		if v.Target == target {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

// volumeHolding returns the volume of s whose target contains file, and file's path
// inside that volume.
func volumeHolding(s types.ServiceConfig, file string) (types.ServiceVolumeConfig, string, bool) {
	for _, v := range s.Volumes {
		if rel, err := filepath.Rel(v.Target, file); err == nil && !strings.HasPrefix(rel, "..") {
			return v, rel, true
		}
	}
	return types.ServiceVolumeConfig{}, "", false
}

func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func TestComposeRequiresItsSecrets(t *testing.T) {
	for _, missing := range []string{"KILLSWITCH_API_TOKEN", "NATS_CLUSTER_PASSWORD"} {
		env := map[string]string{}
		for k, v := range composeTestEnv {
			if k != missing {
				env[k] = v
			}
		}
		if _, err := loadCompose(t, env); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("without %s the compose file must refuse to load, got %v", missing, err)
		}
	}
}

// TestComposeMatchesTheService checks the compose file against what the service and the
// NATS configuration expect: the instances' environment, configuration and shared data,
// the nodes' names, routes and authorization, the generator's and the jobs' files.
func TestComposeMatchesTheService(t *testing.T) {
	p := mustLoadCompose(t)
	for _, name := range append(append([]string{"nats-auth", "sensor-creds", "vault", "telemetry-generator"}, composeNATSNodes...), composeInstances...) {
		if _, err := p.GetService(name); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
	}
	vault, _ := p.GetService("vault")
	if !hasPort(vault, 8200) {
		t.Error("vault must publish 8200")
	}
	for _, s := range p.Services {
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes %s:%s beyond loopback", s.Name, port.HostIP, port.Published)
			}
		}
	}

	// The NATS nodes: one configuration file, a name each, routes to every node.
	nodeURLs := map[string]bool{}
	names := map[string]bool{}
	for _, n := range composeNATSNodes {
		s, _ := p.GetService(n)
		conf := natsNodeConf(t, s)
		env := serviceEnv(s)
		if env["NATS_SERVER_NAME"] != n || names[n] {
			t.Errorf("%s: NATS_SERVER_NAME %q (want its service name, unique)", n, env["NATS_SERVER_NAME"])
		}
		names[n] = true
		for _, peer := range composeNATSNodes {
			want := fmt.Sprintf("nats://route:%s@%s:6222", composeTestEnv["NATS_CLUSTER_PASSWORD"], peer)
			if !strings.Contains(env["NATS_ROUTES"], `"`+want+`"`) {
				t.Errorf("%s: NATS_ROUTES %q lacks the route to %s", n, env["NATS_ROUTES"], peer)
			}
		}
		if env["NATS_CLUSTER_PASSWORD"] != composeTestEnv["NATS_CLUSTER_PASSWORD"] {
			t.Errorf("%s: NATS_CLUSTER_PASSWORD not passed through", n)
		}
		// The configuration file really parses with this node's environment and the
		// generated authorization, as a clustered JetStream node.
		opts := processNATSConf(t, conf, env)
		if opts.ServerName != n || opts.Cluster.Name == "" || opts.Cluster.Port != 6222 || len(opts.Routes) != len(composeNATSNodes) {
			t.Errorf("%s: server_name %q, cluster %q port %d, %d routes", n, opts.ServerName, opts.Cluster.Name, opts.Cluster.Port, len(opts.Routes))
		}
		if opts.Cluster.Username == "" || opts.Cluster.Password != composeTestEnv["NATS_CLUSTER_PASSWORD"] {
			t.Errorf("%s: the routes are not authenticated with NATS_CLUSTER_PASSWORD", n)
		}
		if len(opts.TrustedOperators) != 1 || opts.SystemAccount == "" {
			t.Errorf("%s: no authorization (trusted operators %d)", n, len(opts.TrustedOperators))
		}
		if !opts.JetStream || !opts.SyncAlways || opts.Port != 4222 || opts.HTTPPort != 8222 {
			t.Errorf("%s: jetstream %v, sync always %v, port %d, http %d", n, opts.JetStream, opts.SyncAlways, opts.Port, opts.HTTPPort)
		}
		// JetStream's store is on the node's own named volume: it survives a re-created container.
		if v, _, ok := volumeHolding(s, opts.StoreDir); !ok || v.Type != types.VolumeTypeVolume {
			t.Errorf("%s: store_dir %s is not on a named volume", n, opts.StoreDir)
		} else if other := volumeUsers(p, v.Source); len(other) != 1 {
			t.Errorf("%s: its JetStream volume %s is shared with %v", n, v.Source, other)
		}
		if !hasPort(s, 4222) || !hasPort(s, 8222) {
			t.Errorf("%s must publish its client port and its monitoring port", n)
		}
		nodeURLs[n+":4222"] = true
	}

	// nats-auth writes the authorization into the volume every node mounts as auth/.
	auth, _ := p.GetService("nats-auth")
	authOut := argAfter(auth.Command, "--out")
	if len(auth.Command) < 2 || auth.Command[0] != "creds" || auth.Command[1] != "nats-config" || authOut == "" {
		t.Fatalf("nats-auth command %v", auth.Command)
	}
	authVol, authRel, ok := volumeHolding(auth, authOut)
	if !ok || authVol.Type != types.VolumeTypeVolume {
		t.Fatalf("nats-auth writes %s outside a named volume", authOut)
	}
	for _, n := range composeNATSNodes {
		s, _ := p.GetService(n)
		conf := natsNodeConfTarget(t, s)
		v, ok := volumeAt(s, path.Join(path.Dir(conf), "auth"))
		if !ok || v.Source != authVol.Source || authRel != "auth.conf" || !v.ReadOnly {
			t.Errorf("%s: auth/auth.conf next to %s must be nats-auth's %s (read-only)", n, conf, authOut)
		}
		if _, ok := s.DependsOn["nats-auth"]; !ok {
			t.Errorf("%s must wait for nats-auth", n)
		}
	}

	// The instances: cluster mode, every node, their own instance name and port, the
	// same data volume, a valid configuration.
	var dataVolume string
	hostPorts := map[string]bool{}
	instances := map[string]bool{}
	for _, name := range composeInstances {
		ks, _ := p.GetService(name)
		env := serviceEnv(ks)
		for _, k := range []string{config.EnvNATSURL, config.EnvVaultAddr, config.EnvVaultToken, config.EnvAPIToken, config.EnvHTTPListen, config.EnvDataDir, config.EnvCluster, config.EnvInstance} {
			if env[k] == "" {
				t.Errorf("%s environment lacks %s", name, k)
			}
		}
		seen := map[string]bool{}
		for _, raw := range strings.Split(env[config.EnvNATSURL], ",") {
			u, err := url.Parse(raw)
			if err != nil || u.Scheme != "nats" || !nodeURLs[u.Host] {
				t.Errorf("%s: %s entry %q is not a node's client port", name, config.EnvNATSURL, raw)
			}
			seen[u.Host] = true
		}
		if len(seen) != len(composeNATSNodes) {
			t.Errorf("%s: %s = %q must list every node", name, config.EnvNATSURL, env[config.EnvNATSURL])
		}
		checkURL(t, name+" "+config.EnvVaultAddr, env[config.EnvVaultAddr], "vault", 8200)
		_, httpPort, _ := net.SplitHostPort(env[config.EnvHTTPListen])
		hp, _ := strconv.Atoi(httpPort)
		published := ""
		for _, port := range ks.Ports {
			if port.Target == uint32(hp) {
				published = port.Published
			}
		}
		if published == "" || hostPorts[published] {
			t.Errorf("%s listens on %s but publishes it on %q (must be its own host port)", name, env[config.EnvHTTPListen], published)
		}
		hostPorts[published] = true
		// Its health check asks its own /readyz.
		if hc := ks.HealthCheck; hc == nil || len(hc.Test) < 2 {
			t.Errorf("%s: no health check", name)
		} else if u, err := url.Parse(argAfter(hc.Test, "--url")); err != nil || u.Port() != httpPort || u.Path != "/readyz" {
			t.Errorf("%s: health check %v does not ask its /readyz on %s", name, hc.Test, httpPort)
		}
		// The command is this binary's: run --config <a file mounted into the container>,
		// and that file with this environment is a valid cluster-mode configuration.
		if len(ks.Command) < 3 || ks.Command[0] != "run" || ks.Command[1] != "--config" {
			t.Fatalf("%s command %v", name, ks.Command)
		}
		if c, rest, err := newRootCmd(func(string) string { return "" }).Find(ks.Command); err != nil || c.Name() != ks.Command[0] || c.ParseFlags(rest) != nil {
			t.Fatalf("%s command %v: not a command line of this binary", name, ks.Command)
		}
		mounted, ok := volumeAt(ks, ks.Command[2])
		if !ok {
			t.Fatalf("%s: the config %s is not mounted", name, ks.Command[2])
		}
		cfg, err := config.Load(mounted.Source)
		if err != nil {
			t.Fatalf("mounted config: %v", err)
		}
		cfg.Service.ApplyEnv(func(k string) string { return env[k] })
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: the configuration with its environment: %v", name, err)
		}
		sc := cfg.Service
		if !sc.Cluster.Enabled || sc.Cluster.Instance == "" || instances[sc.Cluster.Instance] || sc.NATS.Replicas != len(composeNATSNodes) {
			t.Errorf("%s: cluster %v, instance %q (unique?), replicas %d", name, sc.Cluster.Enabled, sc.Cluster.Instance, sc.NATS.Replicas)
		}
		instances[sc.Cluster.Instance] = true
		data, ok := volumeAt(ks, sc.DataDir)
		if !ok || data.Type != types.VolumeTypeVolume {
			t.Errorf("%s: the data dir %s is not a named volume", name, sc.DataDir)
		} else if dataVolume != "" && data.Source != dataVolume {
			t.Errorf("%s: data volume %s, another instance has %s: the keys and users must be shared", name, data.Source, dataVolume)
		} else {
			dataVolume = data.Source
		}
		for _, n := range composeNATSNodes {
			if ks.DependsOn[n].Condition != types.ServiceConditionHealthy {
				t.Errorf("%s must wait for %s to be healthy", name, n)
			}
		}
	}
	// Only one instance creates the keys on a first start: the others wait for it.
	if ks2, _ := p.GetService("ks2"); ks2.DependsOn["ks1"].Condition != types.ServiceConditionHealthy {
		t.Error("ks2 must wait for ks1 to be healthy (ks1 creates the shared keys)")
	}
	// The jobs write into the same data volume.
	for _, job := range []string{"nats-auth", "sensor-creds"} {
		s, _ := p.GetService(job)
		dir := argAfter(s.Command, "--data-dir")
		if v, ok := volumeAt(s, dir); !ok || v.Source != dataVolume {
			t.Errorf("%s: --data-dir %s is not the instances' data volume %s", job, dir, dataVolume)
		}
	}

	// The generator publishes to every node with the credential sensor-creds minted.
	gen, _ := p.GetService("telemetry-generator")
	if gen.Command[0] != "generate" {
		t.Errorf("generator command %v", gen.Command)
	}
	for _, n := range composeNATSNodes {
		if !strings.Contains(argAfter(gen.Command, "--nats"), "nats://"+n+":4222") {
			t.Errorf("generator --nats %q lacks %s", argAfter(gen.Command, "--nats"), n)
		}
	}
	sc, _ := p.GetService("sensor-creds")
	minted := argAfter(sc.Command, "--out")
	mv, mrel, ok1 := volumeHolding(sc, minted)
	gv, grel, ok2 := volumeHolding(gen, argAfter(gen.Command, "--nats-creds"))
	if !ok1 || !ok2 || mv.Source != gv.Source || mrel != grel || mv.Type != types.VolumeTypeVolume {
		t.Errorf("generator --nats-creds %s is not the file sensor-creds writes (%s)", argAfter(gen.Command, "--nats-creds"), minted)
	}
	for _, n := range composeNATSNodes {
		s, _ := p.GetService(n)
		for _, v := range s.Volumes {
			if v.Source == mv.Source {
				t.Errorf("%s mounts the sensor credentials' volume", n)
			}
		}
	}
}

func checkURL(t *testing.T, name, raw, host string, port uint32) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() != host || u.Port() != strconv.Itoa(int(port)) {
		t.Errorf("%s = %q, want host %s port %d", name, raw, host, port)
	}
}

// volumeUsers lists the services mounting the named volume source.
func volumeUsers(p *types.Project, source string) []string {
	var users []string
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeVolume && v.Source == source {
				users = append(users, s.Name)
			}
		}
	}
	return users
}

// natsNodeConfTarget returns the configuration path a NATS node is started with (-c).
func natsNodeConfTarget(t *testing.T, s types.ServiceConfig) string {
	t.Helper()
	c := argAfter(s.Command, "-c")
	if c == "" {
		t.Fatalf("%s: not started with -c <config>: %v", s.Name, s.Command)
	}
	return c
}

// natsNodeConf returns the host file mounted as a NATS node's configuration.
func natsNodeConf(t *testing.T, s types.ServiceConfig) string {
	t.Helper()
	v, ok := volumeAt(s, natsNodeConfTarget(t, s))
	if !ok || v.Type != types.VolumeTypeBind {
		t.Fatalf("%s: its configuration %s is not a file of the repository", s.Name, natsNodeConfTarget(t, s))
	}
	return v.Source
}

// processNATSConf parses conf, next to the authorization `creds nats-config` writes, with
// env as the server's environment (the configuration reads variables from it).
func processNATSConf(t *testing.T, conf string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(natsConfWithAuth(t, conf))
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(conf), err)
	}
	return opts
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

// imageVariant is what one container image variant holds, as far as a compose health
// check or command cares: the executables (absolute paths), whether there is a shell
// for CMD-SHELL, its default user and its entrypoint.
type imageVariant struct {
	// match recognises the image reference ("nats:2.15.2-alpine").
	match *regexp.Regexp
	// source says where the facts below come from.
	source string
	// executables are the absolute paths of the programs in the image.
	executables []string
	// shell: /bin/sh exists (CMD-SHELL health checks and shell entrypoints work).
	shell bool
	// passThrough: the entrypoint runs the command itself when its first word is not a
	// flag (docker-entrypoint.sh's `exec "$@"`); otherwise the command is the entrypoint's
	// arguments.
	passThrough bool
	// uid is the default user.
	uid int
}

// imageVariants is the table of the image variants this deployment uses (or must not
// use), checked by hand against their Dockerfiles; a health check or a command naming a
// binary not listed for its image fails TestComposeHealthChecksRunInTheirImages. Add a
// row, with its source, before using another image.
var imageVariants = []imageVariant{
	{
		match: regexp.MustCompile(`^nats:\d+\.\d+\.\d+-alpine$`),
		source: "nats-io/nats-docker <minor>.x/alpine3.22/Dockerfile: FROM alpine:3.22 (busybox: /bin/sh and " +
			"its applets, wget among them, as /usr/bin links), nats-server in /usr/local/bin, ENTRYPOINT " +
			"docker-entrypoint.sh (prepends nats-server when the first argument is a flag, else exec \"$@\")",
		executables: []string{"/usr/local/bin/nats-server", "/usr/local/bin/docker-entrypoint.sh",
			"/bin/busybox", "/bin/sh", "/usr/bin/wget", "/bin/cat", "/bin/ls"},
		shell: true, passThrough: true, uid: 0,
	},
	{
		match: regexp.MustCompile(`^nats:\d+\.\d+\.\d+$`),
		source: "nats-io/nats-docker <minor>.x/scratch/Dockerfile: FROM scratch, only /nats-server " +
			"(ENTRYPOINT) and its configuration; no shell, no wget",
		executables: []string{"/nats-server"},
		uid:         0,
	},
	{
		match: regexp.MustCompile(`^gcr\.io/distroless/static-debian12:nonroot$`),
		source: "GoogleContainerTools/distroless static-debian12, nonroot tag: no shell, no package " +
			"manager, no executable at all (CA certificates, tzdata, /etc/passwd); user nonroot = 65532",
		uid: 65532,
	},
}

// variantOf returns the table's row for image.
func variantOf(image string) (imageVariant, error) {
	for _, v := range imageVariants {
		if v.match.MatchString(image) {
			return v, nil
		}
	}
	return imageVariant{}, fmt.Errorf("image %s is not in the image variant table (compose_test.go imageVariants): "+
		"add what it contains, from its Dockerfile", image)
}

// pathDirs is the PATH of the images (alpine's and distroless's default).
var pathDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// hasExecutable reports whether bin (absolute, or looked up on PATH) is in executables.
func hasExecutable(executables []string, bin string) bool {
	if path.IsAbs(bin) {
		return slices.Contains(executables, bin)
	}
	for _, d := range pathDirs {
		if slices.Contains(executables, path.Join(d, bin)) {
			return true
		}
	}
	return false
}

// checkHealthCheck returns why test cannot run in an image holding v (plus extra, the
// files a Dockerfile copies in), nil if it can.
func checkHealthCheck(v imageVariant, extra []string, test []string) error {
	if len(test) == 0 {
		return fmt.Errorf("empty health check")
	}
	exes := append(slices.Clone(v.executables), extra...)
	switch test[0] {
	case "NONE":
		return nil
	case "CMD-SHELL":
		if !v.shell {
			return fmt.Errorf("CMD-SHELL needs /bin/sh, which the image has not")
		}
		return nil
	case "CMD":
		if len(test) < 2 {
			return fmt.Errorf("CMD without a command")
		}
		if !hasExecutable(exes, test[1]) {
			return fmt.Errorf("%s is not in the image (it has %v)", test[1], exes)
		}
		return nil
	}
	return fmt.Errorf("health check %v: want CMD, CMD-SHELL or NONE", test)
}

func TestComposeHealthCheckTable(t *testing.T) {
	for _, tc := range []struct {
		name, image string
		extra, test []string
		ok          bool
	}{
		{"wget in the alpine variant", "nats:2.15.2-alpine", nil, []string{"CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz"}, true},
		{"wget in the scratch variant (the old file)", "nats:2.10.29", nil, []string{"CMD", "wget", "-qO-", "http://127.0.0.1:8222/healthz"}, false},
		{"curl in the alpine variant", "nats:2.15.2-alpine", nil, []string{"CMD", "curl", "-f", "http://127.0.0.1:8222/healthz"}, false},
		{"a shell in distroless", "gcr.io/distroless/static-debian12:nonroot", []string{"/usr/local/bin/killswitch"}, []string{"CMD-SHELL", "killswitch healthcheck"}, false},
		{"the copied binary in distroless", "gcr.io/distroless/static-debian12:nonroot", []string{"/usr/local/bin/killswitch"}, []string{"CMD", "/usr/local/bin/killswitch", "healthcheck"}, true},
		{"wget in distroless", "gcr.io/distroless/static-debian12:nonroot", []string{"/usr/local/bin/killswitch"}, []string{"CMD", "wget", "http://127.0.0.1:8080/readyz"}, false},
		{"an image not in the table", "busybox:1.36", nil, []string{"CMD", "wget"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := variantOf(tc.image)
			if err == nil {
				err = checkHealthCheck(v, tc.extra, tc.test)
			}
			if (err == nil) != tc.ok {
				t.Fatalf("ok %v, got %v", tc.ok, err)
			}
		})
	}
}

// serviceImage returns the image variant a service runs and the files its Dockerfile
// copies into it (nil for a pulled image).
func serviceImage(t *testing.T, s types.ServiceConfig) (imageVariant, []string, error) {
	t.Helper()
	if s.Build == nil {
		v, err := variantOf(s.Image)
		return v, nil, err
	}
	df, err := parseDockerfile(filepath.Join(s.Build.Context, orDefault(s.Build.Dockerfile, "Dockerfile")))
	if err != nil {
		return imageVariant{}, nil, err
	}
	final := df.stages[len(df.stages)-1]
	v, err := variantOf(final.from)
	if err != nil {
		return imageVariant{}, nil, err
	}
	var copied []string
	for _, c := range final.copies {
		copied = append(copied, c.dest)
	}
	return v, copied, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestComposeHealthChecksRunInTheirImages: every dependency exists, every service_healthy
// dependency has a health check, every health check's program and every NATS node's
// command is in its image variant (imageVariants), and every volume a Killswitch image
// writes is created owned by the image's user.
func TestComposeHealthChecksRunInTheirImages(t *testing.T) {
	p := mustLoadCompose(t)
	for _, s := range p.Services {
		for dep, d := range s.DependsOn {
			ds, err := p.GetService(dep)
			if err != nil {
				t.Errorf("%s depends on %s: %v", s.Name, dep, err)
				continue
			}
			switch d.Condition {
			case types.ServiceConditionHealthy:
				if ds.HealthCheck == nil || ds.HealthCheck.Disable || len(ds.HealthCheck.Test) == 0 || ds.HealthCheck.Test[0] == "NONE" {
					t.Errorf("%s waits for %s to be healthy, which has no health check", s.Name, dep)
				}
			case types.ServiceConditionCompletedSuccessfully:
				if ds.Restart != "no" {
					t.Errorf("%s waits for %s to complete, which restarts (%q)", s.Name, dep, ds.Restart)
				}
			case types.ServiceConditionStarted:
			default:
				t.Errorf("%s: unknown condition %q on %s", s.Name, d.Condition, dep)
			}
		}
		v, extra, err := serviceImage(t, s)
		if s.HealthCheck != nil && !s.HealthCheck.Disable {
			if err != nil {
				t.Errorf("%s: %v", s.Name, err)
			} else if err := checkHealthCheck(v, extra, s.HealthCheck.Test); err != nil {
				t.Errorf("%s: health check %v: %v", s.Name, s.HealthCheck.Test, err)
			}
			if s.HealthCheck.Test[0] == "CMD" && strings.HasSuffix(s.HealthCheck.Test[1], "/killswitch") {
				if c, rest, err := newRootCmd(func(string) string { return "" }).Find(s.HealthCheck.Test[2:]); err != nil || c.Name() != s.HealthCheck.Test[2] || c.ParseFlags(rest) != nil {
					t.Errorf("%s: health check runs %v, not a command line of this binary", s.Name, s.HealthCheck.Test[2:])
				}
			}
		}
	}
	for _, n := range composeNATSNodes {
		s, _ := p.GetService(n)
		v, _, err := serviceImage(t, s)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if len(s.Command) == 0 || (!strings.HasPrefix(s.Command[0], "-") && (!v.passThrough || !hasExecutable(v.executables, s.Command[0]))) {
			t.Errorf("%s: command %v does not run nats-server in %s", n, s.Command, s.Image)
		}
		// The server checked by the cluster test is the one the image runs.
		if want := "nats:" + strings.TrimPrefix(natsServerModuleVersion(t), "v") + "-alpine"; s.Image != want {
			t.Errorf("%s: image %s, want %s (the nats-server version of go.mod, which the tests run)", n, s.Image, want)
		}
	}
}

// natsServerModuleVersion is the nats-server version this module builds with.
func natsServerModuleVersion(t *testing.T) string {
	t.Helper()
	bi, ok := debug.ReadBuildInfo()
	if ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/nats-io/nats-server/v2" {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	t.Fatal("no nats-server module in the build info")
	return ""
}

// dockerfile is the little of a Dockerfile these checks read.
type dockerfile struct{ stages []dockerStage }

type dockerStage struct {
	from, name string
	user       string
	runs       []string
	copies     []dockerCopy
}

type dockerCopy struct {
	from, chown string
	srcs        []string
	dest        string
}

// parseDockerfile reads the instructions (continuation lines joined, comments dropped)
// FROM, RUN, COPY and USER of a Dockerfile.
func parseDockerfile(p string) (*dockerfile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	df := &dockerfile{}
	for _, l := range lines {
		fields := strings.Fields(l)
		if len(fields) == 0 {
			continue
		}
		instr, args := strings.ToUpper(fields[0]), fields[1:]
		if instr != "FROM" && len(df.stages) == 0 {
			if instr == "ARG" {
				continue
			}
			return nil, fmt.Errorf("%s: %s before FROM", p, instr)
		}
		switch instr {
		case "FROM":
			st := dockerStage{from: args[0]}
			if len(args) == 3 && strings.EqualFold(args[1], "AS") {
				st.name = args[2]
			}
			df.stages = append(df.stages, st)
		case "RUN":
			df.stages[len(df.stages)-1].runs = append(df.stages[len(df.stages)-1].runs, strings.Join(args, " "))
		case "USER":
			df.stages[len(df.stages)-1].user = args[0]
		case "COPY":
			c := dockerCopy{}
			for len(args) > 0 && strings.HasPrefix(args[0], "--") {
				k, v, _ := strings.Cut(strings.TrimPrefix(args[0], "--"), "=")
				switch k {
				case "from":
					c.from = v
				case "chown":
					c.chown = v
				}
				args = args[1:]
			}
			if len(args) < 2 {
				return nil, fmt.Errorf("%s: COPY %v", p, args)
			}
			c.srcs, c.dest = args[:len(args)-1], args[len(args)-1]
			df.stages[len(df.stages)-1].copies = append(df.stages[len(df.stages)-1].copies, c)
		}
	}
	if len(df.stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", p)
	}
	return df, nil
}

// checkWritableDirs returns why the final stage of df would not let its user write to
// each of dirs (the targets of named volumes): each must be created by a COPY --chown to
// the user's numeric uid:gid from a directory an earlier stage makes with mkdir. A fresh
// named volume is a copy of the image's directory, owner included; without that the
// volume is root's.
func checkWritableDirs(df *dockerfile, dirs []string) error {
	final := df.stages[len(df.stages)-1]
	v, err := variantOf(final.from)
	if err != nil {
		return err
	}
	uid := v.uid
	if final.user != "" {
		u, _, _ := strings.Cut(final.user, ":")
		if uid, err = strconv.Atoi(u); err != nil {
			return fmt.Errorf("USER %s: give the numeric uid (checked against the volumes' owner)", final.user)
		}
	}
	if uid == 0 {
		return fmt.Errorf("the final stage runs as root")
	}
	owner := fmt.Sprintf("%d:%d", uid, uid)
	for _, dir := range dirs {
		var found bool
		for _, c := range final.copies {
			if path.Clean(c.dest) != path.Clean(dir) {
				continue
			}
			if c.chown != owner {
				return fmt.Errorf("%s is copied with --chown=%q, want %s (the USER)", dir, c.chown, owner)
			}
			made := false
			for _, st := range df.stages[:len(df.stages)-1] {
				if st.name != c.from {
					continue
				}
				for _, r := range st.runs {
					if strings.Contains(r, "mkdir") && strings.Contains(r, c.srcs[0]) {
						made = true
					}
				}
			}
			if !made {
				return fmt.Errorf("%s: stage %q does not mkdir %s", dir, c.from, c.srcs[0])
			}
			found = true
		}
		if !found {
			return fmt.Errorf("%s is not created in the image owned by %s: a named volume mounted there is root's", dir, owner)
		}
	}
	return nil
}

func TestDockerfileOwnsTheVolumes(t *testing.T) {
	p := mustLoadCompose(t)
	df, err := parseDockerfile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Every named volume a service built from the Dockerfile mounts.
	var dirs []string
	for _, s := range p.Services {
		if s.Build == nil {
			continue
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeVolume && !slices.Contains(dirs, v.Target) {
				dirs = append(dirs, v.Target)
			}
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no named volume in the Killswitch services")
	}
	if err := checkWritableDirs(df, dirs); err != nil {
		t.Error(err)
	}
	final := df.stages[len(df.stages)-1]
	if !slices.ContainsFunc(final.copies, func(c dockerCopy) bool { return c.dest == "/usr/local/bin/killswitch" }) {
		t.Error("the final stage does not hold /usr/local/bin/killswitch (the health checks run it)")
	}

	// The checker refuses what the deployment used to have.
	for _, tc := range []struct{ name, body, want string }{
		{"no data dir", "FROM golang:1.26 AS build\nRUN go build -o /out/killswitch .\nFROM gcr.io/distroless/static-debian12:nonroot\n" +
			"COPY --from=build /out/killswitch /usr/local/bin/killswitch\nUSER nonroot:nonroot\n", "numeric uid"},
		{"root-owned copy", "FROM golang:1.26 AS build\nRUN mkdir -p /out/d\nFROM gcr.io/distroless/static-debian12:nonroot\n" +
			"COPY --from=build /out/d /var/lib/killswitch\nUSER 65532:65532\n", "--chown"},
		{"not made", "FROM golang:1.26 AS build\nFROM gcr.io/distroless/static-debian12:nonroot\nUSER 65532:65532\n", "not created"},
		{"root", "FROM golang:1.26 AS build\nRUN mkdir -p /out/d\nFROM gcr.io/distroless/static-debian12:nonroot\n" +
			"COPY --from=build --chown=0:0 /out/d /var/lib/killswitch\nUSER 0\n", "root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "Dockerfile")
			if err := os.WriteFile(f, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			df, err := parseDockerfile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkWritableDirs(df, []string{"/var/lib/killswitch"}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error about %q, got %v", tc.want, err)
			}
		})
	}
}
