package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// natsServerBinary returns a nats-server built from this module's dependency (the
// version the compose file's image runs), cached per version and Go version in the user
// cache directory: the first build takes about a minute, later runs reuse it.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	version := natsServerModuleVersion(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "killswitch", "nats-server-"+version+"-"+runtime.Version())
	bin := filepath.Join(dir, "nats-server")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Build into a file of our own and rename: concurrent builders each finish with a
	// whole binary.
	tmp := filepath.Join(dir, fmt.Sprintf("nats-server.%d.tmp", os.Getpid()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, "github.com/nats-io/nats-server/v2")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server %s: %v\n%s", version, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// composeVolumes stands in for the compose project's named volumes: one directory each.
type composeVolumes struct{ root string }

// hostPath maps containerPath, inside one of s's named volumes, to the volume's directory.
func (v composeVolumes) hostPath(t *testing.T, s types.ServiceConfig, containerPath string) string {
	t.Helper()
	vol, rel, ok := volumeHolding(s, containerPath)
	if !ok || vol.Type != types.VolumeTypeVolume {
		t.Fatalf("%s: %s is not on a named volume", s.Name, containerPath)
	}
	dir := filepath.Join(v.root, vol.Source)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, rel)
}

// runJob runs a one-shot service of the compose file (nats-auth, sensor-creds): its
// command, in this process, with every path on a named volume mapped to the volume's
// directory.
func (v composeVolumes) runJob(t *testing.T, s types.ServiceConfig) {
	t.Helper()
	args := slices.Clone([]string(s.Command))
	for i, a := range args {
		if strings.HasPrefix(a, "/") {
			args[i] = v.hostPath(t, s, a)
		}
	}
	var out, errOut bytes.Buffer
	if code := dispatch(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("%s: %v: exit %d: %s", s.Name, args, code, errOut.String())
	}
}

// composeNode is one NATS node of the compose file, run as a real nats-server on
// loopback.
type composeNode struct {
	name                      string
	client, monitor, route    int
	cmd                       *exec.Cmd
	log                       string
	exited                    chan error
	healthPath, healthCommand string
}

func (n *composeNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.client) }

func (n *composeNode) logTail() string {
	b, _ := os.ReadFile(n.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// startComposeNATS starts the compose file's NATS nodes with its configuration file and
// each node's environment, the authorization written by its nats-auth job, and the
// addresses rewritten to free ports on 127.0.0.1 and the volumes to directories. The
// nodes are stopped (by PID) at the end of the test.
func startComposeNATS(t *testing.T, p *types.Project, vols composeVolumes) []*composeNode {
	t.Helper()
	bin := natsServerBinary(t)
	auth, _ := p.GetService("nats-auth")
	vols.runJob(t, auth)

	nodes := make([]*composeNode, len(composeNATSNodes))
	for i, name := range composeNATSNodes {
		nodes[i] = &composeNode{name: name, client: testharness.FreePort(t), monitor: testharness.FreePort(t), route: testharness.FreePort(t)}
	}
	for _, n := range nodes {
		s, _ := p.GetService(n.name)
		dir := filepath.Join(t.TempDir(), n.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// The mounts: the configuration file and the nats-auth volume next to it.
		b, err := os.ReadFile(natsNodeConf(t, s))
		if err != nil {
			t.Fatal(err)
		}
		conf := string(b)
		for _, r := range [][2]string{
			{"0.0.0.0:4222", fmt.Sprintf("127.0.0.1:%d", n.client)},
			{"0.0.0.0:8222", fmt.Sprintf("127.0.0.1:%d", n.monitor)},
			{"0.0.0.0:6222", fmt.Sprintf("127.0.0.1:%d", n.route)},
			{"/data/jetstream", vols.hostPath(t, s, "/data/jetstream")},
		} {
			if c := strings.Count(conf, r[0]); c != 1 {
				t.Fatalf("%s: %q appears %d times in the configuration (this test rewrites it once)", n.name, r[0], c)
			}
			conf = strings.Replace(conf, r[0], r[1], 1)
		}
		confTarget := natsNodeConfTarget(t, s)
		authMount, ok := volumeAt(s, filepath.Join(filepath.Dir(confTarget), "auth"))
		if !ok {
			t.Fatalf("%s: no auth/ next to %s", n.name, confTarget)
		}
		if err := os.Symlink(filepath.Join(vols.root, authMount.Source), filepath.Join(dir, "auth")); err != nil {
			t.Fatal(err)
		}
		confPath := filepath.Join(dir, filepath.Base(confTarget))
		if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		// The node's environment, its routes pointing at the other nodes' ports.
		env := os.Environ()
		for k, v := range serviceEnv(s) {
			if k == "NATS_ROUTES" {
				for _, peer := range nodes {
					v = strings.ReplaceAll(v, "@"+peer.name+":6222", fmt.Sprintf("@127.0.0.1:%d", peer.route))
				}
			}
			env = append(env, k+"="+v)
		}
		// The health check's URL on this node's monitoring port.
		hc := s.HealthCheck.Test
		hcURL := hc[len(hc)-1]
		if !strings.HasPrefix(hcURL, "http://127.0.0.1:8222/") {
			t.Fatalf("%s: health check %v does not end with a URL on the monitoring port", n.name, hc)
		}
		n.healthPath = strings.TrimPrefix(hcURL, "http://127.0.0.1:8222")
		n.healthCommand = strings.Join(hc[1:len(hc)-1], " ")

		n.log = filepath.Join(dir, "nats-server.log")
		logFile, err := os.Create(n.log)
		if err != nil {
			t.Fatal(err)
		}
		args := slices.Clone([]string(s.Command))
		if args[0] == "nats-server" {
			args = args[1:]
		}
		if i := slices.Index(args, "-c"); i >= 0 {
			args[i+1] = confPath
		}
		n.cmd = exec.Command(bin, args...)
		n.cmd.Env = env
		n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n.exited = make(chan error, 1)
		go func(c *exec.Cmd, exited chan error, f *os.File) {
			exited <- c.Wait()
			f.Close()
		}(n.cmd, n.exited, logFile)
		t.Cleanup(func() {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-n.exited:
			case <-time.After(15 * time.Second):
				_ = n.cmd.Process.Kill()
				<-n.exited
			}
		})
	}
	return nodes
}

// waitHealthy waits until every node's health check URL answers 200 (a JetStream meta
// leader exists), failing with the node's log if one exits or a minute passes.
func waitHealthy(t *testing.T, nodes []*composeNode) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	client := &http.Client{Timeout: 2 * time.Second}
	for _, n := range nodes {
		for {
			select {
			case err := <-n.exited:
				n.exited <- err
				t.Fatalf("%s exited: %v\n%s", n.name, err, n.logTail())
			default:
			}
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.monitor, n.healthPath))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not healthy in a minute (last: %v)\n%s", n.name, err, n.logTail())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestComposeNATSClusterStarts runs the compose file's three NATS nodes as real
// nats-server processes (the image's version, built from the module cache) with its
// configuration, environment and generated authorization: they form one JetStream
// cluster whose health checks pass; the routes demand a password; anonymous clients are
// refused; the service credential creates R3 streams; a sensor credential publishes
// telemetry and cannot read the ledger; `killswitch run` configured as ks1 starts on them
// and keeps everything on three replicas.
func TestComposeNATSClusterStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts nats-server and the binary")
	}
	p := mustLoadCompose(t)
	vols := composeVolumes{root: t.TempDir()}
	nodes := startComposeNATS(t, p, vols)
	waitHealthy(t, nodes)

	// One cluster of three with a meta leader, seen alike from every node.
	var leader string
	for _, n := range nodes {
		var jsz struct {
			Meta struct {
				Leader string `json:"leader"`
				Size   int    `json:"cluster_size"`
			} `json:"meta_cluster"`
		}
		getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/jsz", n.monitor), &jsz)
		if jsz.Meta.Leader == "" || jsz.Meta.Size != len(nodes) || (leader != "" && jsz.Meta.Leader != leader) {
			t.Fatalf("%s: meta leader %q (others %q), cluster size %d", n.name, jsz.Meta.Leader, leader, jsz.Meta.Size)
		}
		leader = jsz.Meta.Leader
	}
	if !slices.Contains(composeNATSNodes, leader) {
		t.Fatalf("meta leader %q is not one of the nodes' server_name", leader)
	}
	// The health check command itself, where busybox is installed (the alpine image's wget).
	if bb, err := exec.LookPath("busybox"); err == nil {
		for _, n := range nodes {
			args := append(strings.Fields(n.healthCommand), fmt.Sprintf("http://127.0.0.1:%d%s", n.monitor, n.healthPath))
			if out, err := exec.Command(bb, args...).CombinedOutput(); err != nil {
				t.Errorf("%s: busybox %v: %v %s", n.name, args, err, out)
			}
			t.Logf("%s: busybox %s: ok", n.name, strings.Join(args, " "))
		}
	}

	// The route port asks for credentials before anything else.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", nodes[0].route), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	info, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || !strings.HasPrefix(info, "INFO ") || !strings.Contains(info, `"auth_required":true`) {
		t.Fatalf("route port INFO %q (%v): routes must be authenticated", info, err)
	}

	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url())
	}
	all := strings.Join(urls, ",")
	if _, err := nats.Connect(all, nats.Timeout(2*time.Second)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous client: %v", err)
	}

	// The service credential nats-auth wrote into the data volume creates R3 streams.
	ks1, _ := p.GetService("ks1")
	dataDir := vols.hostPath(t, ks1, serviceEnv(ks1)["KILLSWITCH_DATA_DIR"])
	connect := func(creds string) *nats.Conn {
		nc, err := natsconn.Options{URL: all, CredsFile: creds, Name: "compose-test"}.Connect(zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	svc := connect(embeddednats.CredsFile(dataDir, embeddednats.RoleService))
	js, err := jetstream.New(svc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	telemetry := createR3(ctx, t, js, jetstream.StreamConfig{Name: "COMPOSE_TELEMETRY", Subjects: []string{"egress.>"}})
	ledgerStream := createR3(ctx, t, js, jetstream.StreamConfig{Name: "COMPOSE_LEDGER", Subjects: []string{"killswitch.ledger"}})
	if _, err := js.Publish(ctx, "killswitch.ledger", []byte(`{"record":"secret"}`)); err != nil {
		t.Fatalf("service publishes to the ledger: %v", err)
	}

	// The sensor credential sensor-creds mints (the generator's).
	sc, _ := p.GetService("sensor-creds")
	vols.runJob(t, sc)
	sensor := connect(vols.hostPath(t, sc, argAfter(sc.Command, "--out")))
	sjs, err := jetstream.New(sensor)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := sjs.Publish(ctx, "egress.mailer", []byte(`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":1}`))
	if err != nil || ack.Stream != telemetry.Config.Name {
		t.Fatalf("sensor publishes telemetry: ack %+v, %v", ack, err)
	}
	// It cannot read the ledger: not by subscribing, not through the JetStream API.
	sub, err := sensor.SubscribeSync("killswitch.ledger")
	if err != nil {
		t.Fatal(err)
	}
	_ = sensor.Flush()
	time.Sleep(200 * time.Millisecond) // the permission violation arrives asynchronously
	if _, err := js.Publish(ctx, "killswitch.ledger", []byte(`{"record":"second"}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(time.Second); err == nil {
		t.Fatalf("a sensor read the ledger: %s", m.Data)
	}
	if m, err := sensor.Request("$JS.API.STREAM.MSG.GET."+ledgerStream.Config.Name, []byte(`{"seq":1}`), 2*time.Second); err == nil {
		t.Fatalf("a sensor got a ledger record through the JetStream API: %s", m.Data)
	}
	// Nor write it: its publish is refused (no acknowledgement comes), the stream keeps
	// its two records.
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = sjs.Publish(pctx, "killswitch.ledger", []byte(`{"record":"forged"}`), jetstream.WithRetryAttempts(0))
	pcancel()
	if err == nil {
		t.Fatal("a sensor wrote to the ledger")
	}
	if si, err := js.Stream(ctx, ledgerStream.Config.Name); err != nil {
		t.Fatal(err)
	} else if inf, err := si.Info(ctx); err != nil || inf.State.Msgs != 2 {
		t.Fatalf("ledger: %v messages (%v), want 2", inf.State.Msgs, err)
	}
	for _, name := range []string{telemetry.Config.Name, ledgerStream.Config.Name} {
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}

	// The real service, as ks1 runs it: the compose configuration file and environment
	// (Vault left out: dry-run), on the three nodes, with the data volume nats-auth wrote.
	// It passes its identity check and creates its streams with three replicas.
	k := composeInstance(t, p, "ks1", nodes, dataDir)
	k.Start(t)
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range []string{"EGRESS", "KILLSWITCH_LEDGER"} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info, err := s.Info(ctx)
		if err != nil || info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("%s: replicas %d, cluster %+v (%v)", name, info.Config.Replicas, info.Cluster, err)
		}
	}
	ack, err = sjs.Publish(ctx, "egress.mailer", []byte(`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","bytes":1}`))
	if err != nil || ack.Stream != "EGRESS" {
		t.Fatalf("sensor publishes telemetry to the service's stream: ack %+v, %v", ack, err)
	}

	// ks2 joins on the same data volume: the two instances share the partitions.
	k2 := composeInstance(t, p, "ks2", nodes, dataDir)
	k2.Start(t)
	ks1svc, _ := p.GetService("ks1")
	token := serviceEnv(ks1svc)["KILLSWITCH_API_TOKEN"]
	deadline := time.Now().Add(30 * time.Second)
	for {
		owners := map[string]int{}
		if st, err := apiStatus(k.HTTPURL(), token); err == nil && st.Cluster != nil {
			for _, m := range st.Cluster.Members {
				if m.Alive {
					owners[m.Member] = len(m.Partitions)
				}
			}
		}
		if owners["ks1"] > 0 && owners["ks2"] > 0 && owners["ks1"]+owners["ks2"] == 16 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ks1 and ks2 do not share the 16 partitions after 30s: %v", owners)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apiStatus reads GET /api/status.
func apiStatus(base, token string) (*httpapi.Status, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/api/status", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	var st httpapi.Status
	return &st, json.NewDecoder(resp.Body).Decode(&st)
}

// composeInstance returns a `killswitch run` process (not started) configured as the
// compose file's service name: its configuration file, its environment with the NATS
// URLs pointing at nodes and no Vault (dry-run), its command's flags, dataDir.
func composeInstance(t *testing.T, p *types.Project, name string, nodes []*composeNode, dataDir string) *testharness.Killswitch {
	t.Helper()
	s, _ := p.GetService(name)
	mounted, ok := volumeAt(s, s.Command[2])
	if !ok {
		t.Fatalf("%s: %s is not mounted", name, s.Command[2])
	}
	cfg, err := os.ReadFile(mounted.Source)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for k, v := range serviceEnv(s) {
		switch k {
		case "KILLSWITCH_NATS_URL":
			for _, n := range nodes {
				v = strings.ReplaceAll(v, "nats://"+n.name+":4222", n.url())
			}
		case "VAULT_ADDR", "VAULT_TOKEN":
			v = ""
		case "KILLSWITCH_DATA_DIR":
			v = dataDir
		case "KILLSWITCH_HTTP_LISTEN":
			continue // the harness gives --http
		}
		env = append(env, k+"="+v)
	}
	k := testharness.NewKillswitch(t, string(cfg), env...)
	k.DataDir = dataDir
	k.Args = append(k.Args, s.Command[3:]...)
	return k
}

// createR3 creates cfg with three replicas, retrying while the cluster settles, and
// checks it is placed on three nodes.
func createR3(ctx context.Context, t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig) *jetstream.StreamInfo {
	t.Helper()
	cfg.Replicas, cfg.Storage = 3, jetstream.FileStorage
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.CreateStream(actx, cfg)
		if err == nil {
			var info *jetstream.StreamInfo
			info, err = s.Info(actx)
			cancel()
			if err == nil && info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2 {
				return info
			}
			if err == nil {
				err = fmt.Errorf("cluster info %+v", info.Cluster)
			}
		} else {
			cancel()
		}
		if ctx.Err() != nil {
			t.Fatalf("service creates the R3 stream %s: %v", cfg.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
