// Package demo runs the whole loop on embedded defaults for a newcomer: a real Vault dev
// server (built on first use), embedded NATS, vendors seeded with real Vault credentials,
// days of realistic telemetry to learn from, then an exfiltration through one vendor's
// stolen token, shown as it happens: detection, decision, revocation, verification, the
// exposure window, and proof that the stolen token no longer works.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/internal/devvault"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/service"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// demoToken is the API token of the demo's admin.
const demoToken = "demo-token-0123456789abcdef"

// ErrNotContained is returned when the stolen credential was not verified dead in time.
var ErrNotContained = errors.New("the stolen credential was not verified revoked")

// Options configures the demo.
type Options struct {
	// Out receives the demo's narration.
	Out io.Writer
	// Log receives the service's log (quiet by default).
	Log *zap.Logger
	// VaultPolicy generates the policy the service's own Vault token gets, scoped to the
	// seeded inventory (vault.PolicyFor).
	VaultPolicy func(killswitch.Inventory) (string, error)
	// NewVaultExecutors builds the Vault executors on the service's client.
	NewVaultExecutors func(ctx context.Context, client *api.Client, inventory killswitch.Inventory) (actions.Registry, error)
	// HistoryDays of telemetry to learn from before the attack. Default 4.
	HistoryDays int
	// Timeout bounds the wait for containment. Default 60s.
	Timeout time.Duration
	// WorkDir holds the demo's state; default a temporary directory removed at the end.
	WorkDir string
	// Binary is the killswitch executable the instances of RunCluster run.
	Binary string
	// Instances is the number of instances of RunCluster. Default 3.
	Instances int
	// KillVendor adds Run's second act: a whole vendor cut off in one plan through the
	// API, proven dead from its side, then restored as a false positive.
	KillVendor bool
}

func (o *Options) defaults() {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.HistoryDays <= 0 {
		o.HistoryDays = 4
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Instances <= 0 {
		o.Instances = 3
	}
}

// workDir returns the demo's directory and what removes it.
func (o *Options) workDir() (string, func(), error) {
	if o.WorkDir != "" {
		return o.WorkDir, func() {}, nil
	}
	d, err := os.MkdirTemp("", "killswitch-demo-")
	if err != nil {
		return "", nil, err
	}
	return d, func() { os.RemoveAll(d) }, nil
}

// Run runs the demo. It returns nil only if the stolen credential was verified dead.
func Run(ctx context.Context, o Options) error {
	o.defaults()
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
	sc, seed, victim := vs.sc, vs.seed, vs.seed.victim
	ksClient, err := api.NewClient(&api.Config{Address: vs.vp.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	ksClient.SetToken(vs.ksToken)
	execs, err := o.NewVaultExecutors(ctx, ksClient, seed.inventory)
	if err != nil {
		return fmt.Errorf("demo: vault executors: %w", err)
	}

	// 3. The service, in process, on free ports.
	// The history is published into the running service: the door's maximum age
	// covers it (a live deployment keeps the default hour).
	cfg := &config.Config{Vendors: seed.inventory, Telemetry: telemetry.Settings{MaxAge: time.Duration(o.HistoryDays+1) * 24 * time.Hour}}
	cfg.Service.ApplyEnv(func(string) string { return "" })
	cfg.Service.NATS.Listen, cfg.Service.HTTP.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Service.DataDir = filepath.Join(work, "data")
	ready := make(chan [2]string, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	svcDone := make(chan error, 1)
	go func() {
		svcDone <- service.Run(sctx, service.Options{
			Config: cfg, Playbooks: []playbooks.Source{playbooks.Shipped()}, VaultExecutors: execs, VaultClient: ksClient,
			APIToken: demoToken, Log: o.Log, CheckpointEvery: time.Hour,
			Ready: func(h, n string) { ready <- [2]string{h, n} },
		})
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-svcDone:
		return fmt.Errorf("demo: service: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	p.step("killswitch running: embedded NATS %s, API http://%s, shipped playbooks, enforce mode", addrs[1], addrs[0])
	nc, tl, pub, err := watchService(addrs[1], cfg.Service.DataDir, p)
	if err != nil {
		return err
	}
	defer nc.Close()

	// 4. History to learn from, as fast as JetStream stores it.
	n, err := streamHistory(ctx, p, sc, pub, o.HistoryDays)
	if err != nil {
		return err
	}
	if err := waitIngested(ctx, nc, int64(n)); err != nil {
		return err
	}

	// 5. The attack: the stolen token moves data fast.
	p.step("Attack: %s's token %q is stolen and used to pull data out", victim.vendor, victim.cred)
	tl.live(victim)
	go exfiltrate(ctx, pub, tl, victim, nil)
	select {
	case <-tl.contained:
	case <-time.After(o.Timeout):
		return fmt.Errorf("%w within %s", ErrNotContained, o.Timeout)
	case err := <-svcDone:
		return fmt.Errorf("demo: service stopped: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}

	// 6. The proof, from the attacker's side, and the audit trail.
	if err := prove(ctx, p, vs, nc); err != nil {
		return err
	}
	p.step("Exposure window: %s (first anomalous byte → verified revocation); %s left before the cut-off",
		tl.exposure(), human(tl.bytesSent()))
	if o.KillVendor {
		if err := actKill(ctx, p, vs, "http://"+addrs[0], demoToken); err != nil {
			return err
		}
	}
	stop()
	<-svcDone
	return nil
}

// watchService connects to url as the data directory's service identity, narrates the
// service's events into a timeline and returns a telemetry publisher on the connection
// (closed with it).
func watchService(url, dataDir string, p *printer) (*nats.Conn, *timeline, *telnats.Publisher, error) {
	nc, err := nats.Connect(url, nats.UserCredentials(embeddednats.CredsFile(dataDir, embeddednats.RoleService)),
		nats.CustomInboxPrefix(embeddednats.ServiceInboxPrefix), nats.MaxReconnects(-1))
	if err != nil {
		return nil, nil, nil, err
	}
	tl := newTimeline(p)
	if _, err := nc.Subscribe("killswitch.events.>", tl.event); err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	pub, err := telnats.NewPublisher(nc, telnats.PublisherOptions{})
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return nc, tl, pub, nil
}

// streamHistory publishes the scenario's days of telemetry for the detectors to learn
// from, as fast as JetStream stores them, and returns how many events it sent.
func streamHistory(ctx context.Context, p *printer, sc *scenario.Scenario, pub *telnats.Publisher, days int) (int, error) {
	p.step("Streaming %d days of recorded egress telemetry so the detectors learn each credential's habits…", days)
	began := time.Now()
	n, err := sc.Publish(ctx, pub, nil)
	if err != nil {
		return 0, fmt.Errorf("demo: history: %w", err)
	}
	p.line("%d events in %s", n, time.Since(began).Round(time.Millisecond))
	return n, nil
}

// exfiltrate plays the attacker: 40 MB every 50 ms through the stolen credential until
// it is contained (at most 40 times). started, if set, is called after the first event
// is stored.
func exfiltrate(ctx context.Context, pub *telnats.Publisher, tl *timeline, victim *credential, started func()) {
	for i := range 40 {
		if ctx.Err() != nil || tl.isContained() {
			return
		}
		e := telemetry.Event{Time: time.Now().UTC(), Vendor: victim.vendor, Credential: victim.cred,
			Dst: "203.0.113.66", DstPort: 443, Bytes: 40 << 20, Records: 10000, Sensor: "egress-gw-1", Protocol: "tcp"}
		if err := pub.Publish(ctx, &e); err != nil {
			return
		}
		tl.sent(e.Bytes)
		if i == 0 {
			tl.first(e.Time)
			if started != nil {
				started()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prove shows, from the attacker's side, that the stolen token is dead, and verifies
// the ledger.
func prove(ctx context.Context, p *printer, vs *vaultSetup, nc *nats.Conn) error {
	victim := vs.seed.victim
	stolen, _ := api.NewClient(&api.Config{Address: vs.vp.Addr(), Timeout: 5 * time.Second})
	stolen.SetToken(victim.token)
	_, lerr := stolen.Auth().Token().LookupSelfWithContext(ctx)
	if lerr == nil {
		return fmt.Errorf("%w: the stolen token still works", ErrNotContained)
	}
	p.step("Proof: the stolen token, used against Vault now, gets: %s", vaultRefusal(lerr))
	if _, err := stolen.KVv2("secret").Get(ctx, "vendors/"+victim.vendor+"/customers"); err == nil {
		return fmt.Errorf("%w: the stolen token still reads the vendor's secret", ErrNotContained)
	}
	p.line("and can no longer read secret/vendors/%s/customers", victim.vendor)
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		return err
	}
	res, err := ledger.Verify(ledgerjs.ReadStream(ctx, st))
	if err != nil {
		return fmt.Errorf("demo: ledger: %w", err)
	}
	p.line("Ledger: %d hash-chained records, chain intact", res.Records)
	return nil
}

// vaultSetup is the demo's Vault: the dev server, the scenario's vendors seeded with
// real credentials, and the service's own token, scoped to them.
type vaultSetup struct {
	vp      *devvault.Process
	sc      *scenario.Scenario
	seed    *seeded
	ksToken string
	// partner is the second act's vendor (Options.KillVendor), seeded with holdings.
	partner *devvault.Seeded
}

// root returns a client with the dev Vault's root token.
func (v *vaultSetup) root() *api.Client {
	c, _ := api.NewClient(&api.Config{Address: v.vp.Addr(), Timeout: 5 * time.Second}) // only a bad address fails
	c.SetToken(v.vp.RootToken())
	return c
}

func (v *vaultSetup) stop() {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = v.vp.Stop(sctx)
}

// setUpVault builds (first time) and starts the dev Vault and seeds it (steps 1 and 2).
func setUpVault(ctx context.Context, o Options, p *printer) (*vaultSetup, error) {
	p.step("Vault: building the dev server if needed (first time: a few minutes; cached afterwards)")
	src, err := devvault.FindSourceDir("")
	if err != nil {
		return nil, fmt.Errorf("demo: %w (run the demo from the repository)", err)
	}
	bin, err := devvault.Build(ctx, devvault.BuildOptions{SourceDir: src, Progress: indent(o.Out)})
	if err != nil {
		return nil, fmt.Errorf("demo: build the dev Vault: %w", err)
	}
	vp, err := devvault.Start(ctx, devvault.StartOptions{BinPath: bin})
	if err != nil {
		return nil, fmt.Errorf("demo: start the dev Vault: %w", err)
	}
	vs := &vaultSetup{vp: vp}
	if err := vs.seedIt(ctx, o, p); err != nil {
		vs.stop()
		return nil, err
	}
	return vs, nil
}

func (vs *vaultSetup) seedIt(ctx context.Context, o Options, p *printer) error {
	p.line("Vault dev server on %s (in memory, pid %d)", vs.vp.Addr(), vs.vp.PID())
	root, err := api.NewClient(&api.Config{Address: vs.vp.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	root.SetToken(vs.vp.RootToken())
	// Two events a minute per credential: at 0.5 a key's rare large transfers at an
	// hour it has barely been seen at crossed the spike's critical line in most runs
	// (10 critical detections over 8 start times, each revoking an innocent credential
	// in the history); at 2, 6 in 336 start times.
	start := time.Now().UTC().Add(-time.Duration(o.HistoryDays) * 24 * time.Hour)
	vs.sc = scenario.New(scenario.Config{Seed: 7, Start: start, Days: o.HistoryDays, Vendors: 3,
		CredentialsPerVendor: 2, EventsPerMinute: 2, Attacks: -1})
	if vs.seed, err = seedVault(ctx, root, vs.sc.Inventory()); err != nil {
		return fmt.Errorf("demo: seed Vault: %w", err)
	}
	if o.KillVendor {
		if vs.partner, err = devvault.SeedVendor(ctx, root, nil, partnerName); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		vs.seed.inventory[partnerName] = vs.partner.Vendor
	}
	p.step("Vendors seeded with real Vault credentials:")
	for _, v := range vs.seed.vendorNames() {
		p.line("%-10s %s", v, strings.Join(vs.seed.describe(v), ", "))
	}
	policy, err := o.VaultPolicy(vs.seed.inventory)
	if err != nil {
		return fmt.Errorf("demo: the service's policy: %w", err)
	}
	if vs.ksToken, err = serviceToken(ctx, root, policy); err != nil {
		return fmt.Errorf("demo: the service's token: %w", err)
	}
	p.line("killswitch's own Vault token holds only the policy generated for this inventory: it can revoke these credentials and nothing else")
	return nil
}

// waitIngested waits until the telemetry consumer has acknowledged n events.
func waitIngested(ctx context.Context, nc *nats.Conn, n int64) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		c, err := js.Consumer(ctx, "EGRESS", "killswitch-telemetry")
		if err == nil {
			if ci, err := c.Info(ctx); err == nil && int64(ci.AckFloor.Stream) >= n {
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

// timeline prints the service's events as they happen, relative to the attack.
type timeline struct {
	p         *printer
	mu        sync.Mutex
	victim    *credential
	t0        time.Time
	sentBytes int64
	window    string
	done      bool
	contained chan struct{}
	// history holds the IDs of the detections and incidents announced while the
	// history streamed: after a failover the partition's new owner handles the last
	// unacknowledged stretch of it again and announces them again.
	history map[string]bool
	again   bool // the AGAIN line was printed
}

func newTimeline(p *printer) *timeline {
	return &timeline{p: p, contained: make(chan struct{}), history: make(map[string]bool)}
}

func (t *timeline) live(v *credential) { t.mu.Lock(); t.victim = v; t.mu.Unlock() }

func (t *timeline) first(at time.Time) {
	t.mu.Lock()
	if t.t0.IsZero() {
		t.t0 = at
	}
	t.mu.Unlock()
}

// start is when the attack's first event was sent.
func (t *timeline) start() time.Time { t.mu.Lock(); defer t.mu.Unlock(); return t.t0 }

func (t *timeline) sent(b int64) { t.mu.Lock(); t.sentBytes += b; t.mu.Unlock() }

func (t *timeline) bytesSent() int64 { t.mu.Lock(); defer t.mu.Unlock(); return t.sentBytes }

func (t *timeline) isContained() bool { t.mu.Lock(); defer t.mu.Unlock(); return t.done }

func (t *timeline) exposure() string { t.mu.Lock(); defer t.mu.Unlock(); return t.window }

func (t *timeline) at() string {
	if t.t0.IsZero() {
		return "        "
	}
	return fmt.Sprintf("+%6.3fs", time.Since(t.t0).Seconds())
}

// fromHistory reports whether a detection or incident ID belongs to the history: while
// the history streams it is remembered (nothing is narrated then), and announced again
// after the attack began it is counted, not narrated.
func (t *timeline) fromHistory(id string) bool {
	if t.victim == nil {
		t.history[id] = true
		return true
	}
	if t.history[id] {
		t.skip()
		return true
	}
	return false
}

// skip passes over an announcement of the history handled again; the first one is
// narrated as such.
func (t *timeline) skip() {
	if !t.again {
		t.again = true
		t.p.tl(t.at(), "AGAIN  ", "history the killed instance had not acknowledged is handled again; what it raised before is not narrated")
	}
}

// ofHistory reports whether every detection of an incident announced since the attack
// began belongs to the history (a new owner's incident for history handled again).
func (t *timeline) ofHistory(in incidents.Incident) bool {
	if len(in.Detections) == 0 {
		return false
	}
	for _, d := range in.Detections {
		if !t.history[d.ID] {
			return false
		}
	}
	t.skip()
	return true
}

// event prints one service event (killswitch.events.<kind>.<vendor>).
func (t *timeline) event(m *nats.Msg) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	kind := strings.SplitN(strings.TrimPrefix(m.Subject, "killswitch.events."), ".", 2)[0]
	switch kind {
	case "detection":
		var d detectors.Detection
		if json.Unmarshal(m.Data, &d) != nil || t.fromHistory(d.ID) {
			return
		}
		t.p.tl(t.at(), "DETECT ", "%s %s on %s: %s observed, line %s (score %.2f)", d.Severity, d.Detector,
			d.Key, human(int64(d.Observed)), human(int64(d.Expected.High)), d.Score)
	case "incident":
		var in incidents.Incident
		if json.Unmarshal(m.Data, &in) != nil || t.fromHistory(in.ID) || t.ofHistory(in) {
			return
		}
		t.p.tl(t.at(), "INCIDENT", "%s opened for %s", in.ID, in.Key())
	case "decision":
		var r playbooks.Result
		if json.Unmarshal(m.Data, &r) == nil && !t.fromHistory(r.DetectionID) {
			by := ""
			if len(r.Matched) > 0 {
				by = "playbooks " + strings.Join(r.Matched, ", ") + ", "
			}
			t.p.tl(t.at(), "DECIDE ", "%s (%sevaluated in %s)", r.Decision.Reason, by, r.EvalDuration.Round(time.Microsecond))
		}
	case "action":
		var a incidents.ActionRef
		if t.victim == nil || json.Unmarshal(m.Data, &a) != nil {
			return
		}
		t.p.tl(t.at(), "ACT    ", "%s %s: %s %s", a.Type, a.Target, strings.ToUpper(string(a.Status)), firstLine(a.Detail))
		if a.Status == incidents.ActionVerified && a.Credential == t.victim.cred && a.Type.Destructive() {
			t.done = true
			t.window = fmt.Sprintf("%.3f s", a.At.Sub(t.t0).Seconds())
			close(t.contained)
		}
	}
}

type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) step(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\n==> "+format+"\n", a...)
}

func (p *printer) line(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "    "+format+"\n", a...)
}

func (p *printer) tl(at, tag, format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "    %s  %s  "+format+"\n", append([]any{at, tag}, a...)...)
}

// indent prefixes the dev Vault build's progress lines.
func indent(w io.Writer) io.Writer { return &prefixWriter{w: w} }

type prefixWriter struct{ w io.Writer }

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			if _, err := io.WriteString(p.w, "    "+l); err != nil {
				return 0, err
			}
		}
	}
	return len(b), nil
}

// vaultRefusal renders Vault's answer to a dead token: status and message.
func vaultRefusal(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return fmt.Sprintf("HTTP %d %s", re.StatusCode, strings.Join(re.Errors, "; "))
	}
	return firstLine(err.Error())
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func human(b int64) string {
	f := float64(b)
	for _, u := range []string{"B", "KB", "MB", "GB"} {
		if f < 1000 {
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1000
	}
	return fmt.Sprintf("%.1f TB", f)
}
