package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/pipeline/cluster"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"
)

// demoPartitions is the cluster demo's number of vendor partitions.
const demoPartitions = 8

// demoAPIToken is the API token of the demo's instances (they listen on 127.0.0.1).
const demoAPIToken = "demo-token-0123456789abcdef"

// instance is one `killswitch run` process of the cluster demo.
type instance struct {
	name string
	http string
	cmd  *exec.Cmd
	done chan error
}

// RunCluster runs the demo on a cluster: three NATS nodes (in this process) and
// Instances `killswitch run` processes (o.Binary) in cluster mode sharing the vendors.
// The same attack as Run starts, and at that moment the instance owning the attacked
// vendor is killed with SIGKILL. It prints who took the vendor over and when, and the
// exposure window, and returns nil only if the stolen credential was verified dead,
// exactly once (one incident, one revocation of it).
func RunCluster(ctx context.Context, o Options) error {
	o.defaults()
	if o.Binary == "" {
		return errors.New("demo: the cluster demo needs the killswitch binary (Options.Binary)")
	}
	p := &printer{w: o.Out}
	work, remove, err := o.workDir()
	if err != nil {
		return err
	}
	defer remove()
	vs, err := setUpVault(ctx, o, p)
	if err != nil {
		return err
	}
	defer vs.stop()
	victim := vs.seed.victim

	// 3. Three NATS nodes with the data directory's authorization, R3 everything.
	data := filepath.Join(work, "data")
	auth, _, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(data))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, r := range embeddednats.StandardRoles() {
		if _, _, err := auth.EnsureCreds(r, time.Now()); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	nc3, err := embeddednats.StartCluster(ctx, embeddednats.ClusterOptions{Dir: filepath.Join(work, "nats"), Auth: auth})
	if err != nil {
		return fmt.Errorf("demo: NATS cluster: %w", err)
	}
	defer nc3.Shutdown()
	p.step("NATS: a 3-node JetStream cluster (%s), authentication on, every stream and bucket R3", nc3.URL())

	// 4. The instances, one OS process each, sharing the data directory's keys.
	cfgPath := filepath.Join(work, "killswitch.yaml")
	if err := writeClusterConfig(cfgPath, vs.seed.inventory, nc3.URL(), o.HistoryDays); err != nil {
		return err
	}
	fleet := map[string]*instance{}
	defer func() {
		for _, in := range fleet {
			in.stop()
		}
	}()
	var names []string
	for i := range o.Instances {
		name := fmt.Sprintf("ks%d", i+1)
		in, err := startInstance(ctx, o.Binary, name, cfgPath, data, work, vs)
		if err != nil {
			return err
		}
		fleet[name] = in
		names = append(names, name)
		p.line("%s: killswitch run, pid %d, API http://%s", name, in.cmd.Process.Pid, in.http)
	}
	if _, err := waitOwners(ctx, fleet[names[0]], names, 30*time.Second); err != nil {
		return err
	}

	nc, tl, pub, err := watchService(nc3.URL(), data, p)
	if err != nil {
		return err
	}
	defer nc.Close()

	// 5. History to learn from.
	n, err := streamHistory(ctx, p, vs.sc, pub, o.HistoryDays)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := waitDrained(ctx, js, uint64(n)); err != nil {
		return err
	}

	// 6. The attack, and its vendor's owner killed as it starts (the owners read now:
	// the partitions may have moved since the instances joined).
	owners, err := waitOwners(ctx, fleet[names[0]], names, 30*time.Second)
	if err != nil {
		return err
	}
	p.step("%d instances share %d vendor partitions:", len(names), demoPartitions)
	for _, n := range names {
		var ps []string
		for part, owner := range owners {
			if owner == n {
				ps = append(ps, fmt.Sprint(part))
			}
		}
		slices.Sort(ps)
		p.line("%s owns partitions %s", n, strings.Join(ps, ", "))
	}
	part := cluster.Of(victim.vendor, demoPartitions)
	owner := owners[part]
	survivor := names[0]
	if survivor == owner {
		survivor = names[1]
	}
	p.step("Attack: %s's token %q is stolen and used to pull data out; %s owns %s (partition %d) and is killed (SIGKILL) as it starts",
		victim.vendor, victim.cred, owner, victim.vendor, part)
	tl.live(victim)
	var killed time.Time
	started := make(chan struct{})
	go exfiltrate(ctx, pub, tl, victim, func() {
		fleet[owner].kill()
		killed = time.Now()
		close(started)
	})
	select {
	case <-started:
	case <-time.After(o.Timeout):
		return errors.New("demo: the attack could not start")
	}
	p.tl(tl.at(), "KILL   ", "%s (pid %d) killed with SIGKILL", owner, fleet[owner].cmd.Process.Pid)
	delete(fleet, owner)
	took, newOwner, err := waitTakeover(ctx, fleet[survivor], part, owner, o.Timeout)
	if err != nil {
		return err
	}
	p.tl(tl.at(), "MOVE   ", "%s took over partition %d (%s) %s after the kill", newOwner, part, victim.vendor,
		took.Sub(killed).Round(time.Millisecond))
	select {
	case <-tl.contained:
	case <-time.After(o.Timeout):
		return fmt.Errorf("%w within %s; what the instances reported:\n%s", ErrNotContained, o.Timeout, problems(work, names))
	case <-ctx.Done():
		return ctx.Err()
	}

	// 7. Exactly once, the proof, the audit trail.
	if err := exactlyOnce(ctx, fleet[survivor], victim, tl.start()); err != nil {
		return err
	}
	p.step("Exactly once: one incident for %s/%s, one verified revocation, across the failover", victim.vendor, victim.cred)
	if err := prove(ctx, p, vs, nc); err != nil {
		return err
	}
	p.step("Failover: %s, owner of %s, killed → %s consuming its partition %s later; exposure window: %s (first anomalous byte → verified revocation); %s left before the cut-off",
		owner, victim.vendor, newOwner, took.Sub(killed).Round(time.Millisecond), tl.exposure(), human(tl.bytesSent()))
	return nil
}

// writeClusterConfig writes the instances' configuration: the inventory, the cluster,
// R3, and a door whose maximum age admits the history.
func writeClusterConfig(path string, inv killswitch.Inventory, natsURL string, days int) error {
	b, err := yaml.Marshal(map[string]any{
		"vendors":   inv,
		"telemetry": map[string]any{"max_age": (time.Duration(days+1) * 24 * time.Hour).String()},
		"service": map[string]any{
			"nats":    map[string]any{"url": natsURL, "replicas": 3},
			"cluster": map[string]any{"enabled": true, "partitions": demoPartitions},
		},
	})
	if err != nil {
		return fmt.Errorf("demo: configuration: %w", err)
	}
	if _, err := config.Parse(strings.NewReader(string(b))); err != nil {
		return fmt.Errorf("demo: the configuration written does not load: %w", err)
	}
	return os.WriteFile(path, b, 0o600)
}

// startInstance starts `killswitch run` as member name and waits until it is ready.
func startInstance(ctx context.Context, bin, name, cfg, data, work string, vs *vaultSetup) (*instance, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, err
	}
	in := &instance{name: name, http: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan error, 1)}
	in.cmd = exec.Command(bin, "run", "--config", cfg, "--data-dir", data, "--http", in.http, "--log-level", "info")
	in.cmd.Env = append(os.Environ(), "VAULT_ADDR="+vs.vp.Addr(), "VAULT_TOKEN="+vs.ksToken, "KILLSWITCH_INSTANCE="+name,
		"KILLSWITCH_API_TOKEN="+demoAPIToken, "KILLSWITCH_NATS_URL=")
	in.cmd.Stdout, in.cmd.Stderr = logf, logf
	if err := in.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("demo: start %s: %w", name, err)
	}
	go func() { in.done <- in.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get("http://" + in.http + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return in, nil
			}
		}
		select {
		case err := <-in.done:
			return nil, fmt.Errorf("demo: %s exited (%v); its log: %s", name, err, logf.Name())
		case <-ctx.Done():
			in.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			in.stop()
			return nil, fmt.Errorf("demo: %s not ready in 60s; its log: %s", name, logf.Name())
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// kill ends the process with SIGKILL.
func (in *instance) kill() {
	_ = in.cmd.Process.Signal(syscall.SIGKILL)
	<-in.done
}

// stop ends the process with SIGTERM, then SIGKILL after 15 s.
func (in *instance) stop() {
	if in.cmd.ProcessState != nil {
		return
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(15 * time.Second):
		in.kill()
	}
}

// status asks an instance for /api/status.
func (in *instance) status(ctx context.Context) (*httpapi.Status, error) {
	var st httpapi.Status
	return &st, in.get(ctx, "/api/status", &st)
}

func (in *instance) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.http+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+demoAPIToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// owners maps each partition to its owner, as st says.
func owners(st *httpapi.Status) map[int]string {
	out := map[int]string{}
	if st.Cluster == nil {
		return out
	}
	for _, m := range st.Cluster.Members {
		for _, p := range m.Partitions {
			out[p] = m.Member
		}
	}
	return out
}

// waitOwners waits until every instance named is alive and owns partitions, and every
// partition has an owner.
func waitOwners(ctx context.Context, via *instance, names []string, limit time.Duration) (map[int]string, error) {
	deadline := time.Now().Add(limit)
	for {
		if st, err := via.status(ctx); err == nil {
			own := owners(st)
			all := len(own) == demoPartitions
			for _, n := range names {
				all = all && slices.Contains(mapValues(own), n)
			}
			if all {
				return own, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("demo: the instances did not share the partitions in time")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func mapValues(m map[int]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// waitTakeover waits until partition part is owned by another member than dead, and
// returns when that was seen and who.
func waitTakeover(ctx context.Context, via *instance, part int, dead string, limit time.Duration) (time.Time, string, error) {
	deadline := time.Now().Add(limit)
	for {
		if st, err := via.status(ctx); err == nil && st.Cluster != nil {
			gone := !slices.ContainsFunc(st.Cluster.Members, func(m httpapi.ClusterMember) bool { return m.Member == dead })
			if o := owners(st)[part]; o != "" && o != dead && gone {
				return time.Now(), o, nil
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, "", fmt.Errorf("demo: nobody took partition %d over from %s in %s", part, dead, limit)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitDrained waits until the instances have handled n events: the group's work queue
// has sourced them all and holds none unacknowledged.
func waitDrained(ctx context.Context, js jetstream.JetStream, n uint64) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if st, err := js.Stream(ctx, telnats.DefaultStream+"-"+telnats.DefaultGroup); err == nil {
			if info, err := st.Info(ctx); err == nil && info.State.LastSeq >= n && info.State.Msgs == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("demo: the history was not ingested in time")
}

// exactlyOnce checks that the attack on the stolen credential (the incidents detected
// since it started; the history may have had its own) has one incident with one verified
// revocation of it. The verified action is announced on the event stream before its
// incident is stored, so it reads the stored incidents until they show the revocation
// (5 s at most); a second incident or revocation fails at once.
func exactlyOnce(ctx context.Context, via *instance, victim *credential, attack time.Time) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var body struct {
			Incidents []incidents.Incident `json:"incidents"`
		}
		if err := via.get(ctx, "/api/incidents", &body); err != nil {
			return err
		}
		var ins []incidents.Incident
		for _, in := range body.Incidents {
			if in.Vendor == victim.vendor && in.Credential == victim.cred && !in.LastDetectionAt.Before(attack) {
				ins = append(ins, in)
			}
		}
		revoked := 0
		for _, in := range ins {
			for _, a := range in.Actions {
				if a.Credential == victim.cred && a.Type.Destructive() && a.Status == incidents.ActionVerified {
					revoked++
				}
			}
		}
		switch {
		case len(ins) == 1 && revoked == 1:
			return nil
		case len(ins) > 1 || revoked > 1 || time.Now().After(deadline):
			return fmt.Errorf("%w exactly once: %d incidents, %d verified revocations of %s/%s", ErrNotContained, len(ins), revoked,
				victim.vendor, victim.cred)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// problems returns the warnings and errors the instances logged (the last 20 of each),
// for a demo that failed.
func problems(work string, names []string) string {
	var b strings.Builder
	for _, n := range names {
		raw, err := os.ReadFile(filepath.Join(work, n+".log"))
		if err != nil {
			continue
		}
		var lines []string
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
				lines = append(lines, l)
			}
		}
		fmt.Fprintf(&b, "%s:\n  %s\n", n, strings.Join(lines[max(0, len(lines)-20):], "\n  "))
	}
	return b.String()
}
