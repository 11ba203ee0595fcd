// Package service assembles `killswitch run`: NATS (embedded or remote), the pipeline
// (ingest, detectors, responder) on JetStream, the guard rails and executors, the
// ledger, the HTTP API and the metrics. It holds wiring only; the logic lives in the
// stages. cmd/killswitch and the demo run it.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	actnats "github.com/killswitch-dev/killswitch/actions/nats"
	"github.com/killswitch-dev/killswitch/actions/natskv"
	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/incidents"
	incnatskv "github.com/killswitch-dev/killswitch/incidents/natskv"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/killswitch-dev/killswitch/metrics"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/pipeline/cluster"
	pipejs "github.com/killswitch-dev/killswitch/pipeline/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Options configures the service.
type Options struct {
	// Config is the loaded configuration (environment overrides already applied to
	// Config.Service).
	Config *config.Config
	// Playbooks are the playbook sources (the shipped library and/or directories).
	Playbooks []playbooks.Source
	// VaultExecutors carry out the Vault action types; nil runs in dry-run mode.
	VaultExecutors actions.Registry
	// VaultClient is the client of VaultExecutors: kill-vendor enumerates what a vendor
	// holds with it and restore brings credentials back with it. nil plans kills from the
	// inventory alone and refuses restores.
	VaultClient *vaultapi.Client
	// DryRunReason says why there are no Vault executors (logged loudly, in /api/status).
	DryRunReason string
	// VaultTokenBroad reports that the Vault executors run on a root token or one that
	// can do more than the inventory's policy, allowed by --allow-broad-vault-token:
	// /api/status says so (vault_token_scope) and killswitch_vault_token_broad is 1.
	VaultTokenBroad bool
	// APIToken, if set, is the bearer token of the HTTP API's user "admin" (role admin),
	// created or updated at start. Empty: the users in DataDir/users.json; a first start
	// creates "admin" with its token in DataDir/api-token (0600).
	APIToken string
	// NewDecoder makes the telemetry decoder: json (default), vpc, ocsf or zeek.
	NewDecoder func() telemetry.Decoder
	// EvalTimeout is the playbooks' evaluation deadline; past it a decision escalates to
	// a human. Default the playbooks engine's (50 ms).
	EvalTimeout time.Duration
	// Shards is the number of detector shards. Default GOMAXPROCS.
	Shards int
	// CheckpointEvery is how often detector state is checkpointed. Default 30s.
	CheckpointEvery time.Duration
	// TickEvery is how often the processing-time checks run (silence, incident and
	// approval expiry, telemetry health). Default 10s.
	TickEvery time.Duration
	// Clock tells the time. Default the wall clock.
	Clock clock.Clock
	// Log receives the service's log.
	Log *zap.Logger
	// Ready, if set, is called once the service is serving, with the HTTP address and
	// the NATS URL.
	Ready func(httpAddr, natsURL string)
}

// Service is a running `killswitch run`.
type Service struct {
	o       Options
	cfg     *config.Config
	log     *zap.Logger
	metrics *metrics.Metrics

	ns        *embeddednats.Server
	nc        *nats.Conn
	js        jetstream.JetStream
	ledger    *ledgerjs.Stream
	pipe      *pipeline.Pipeline
	src       *telnats.JetStreamSource
	counters  *telemetry.Counters
	runner    *actions.Runner
	pb        *playbooks.Engine
	incidents *incnatskv.Store
	pager     pipejs.NotifyPager

	httpSrv  *http.Server
	httpLn   net.Listener
	ready    atomic.Bool
	instance string

	// Cluster mode only (service.cluster.enabled).
	members *cluster.Members
	ingest  *cluster.Ingest
	respond *cluster.Respond
	storms  *cluster.Storm
}

// Run starts the service and blocks until ctx is done, then shuts down gracefully:
// it stops fetching, lets in-flight work finish (or abandons it unacknowledged),
// checkpoints the detectors and closes everything.
func Run(ctx context.Context, o Options) error {
	s, err := Start(ctx, o)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Start connects, creates the streams and buckets, builds the pipeline, restores the
// open incidents and the detector state, and binds the HTTP listener; Serve runs it.
func Start(ctx context.Context, o Options) (_ *Service, err error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Shards <= 0 {
		o.Shards = runtime.GOMAXPROCS(0)
	}
	if o.TickEvery <= 0 {
		o.TickEvery = 10 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	cfg := o.Config
	sc := &cfg.Service
	s := &Service{o: o, cfg: cfg, log: o.Log, metrics: metrics.New(), instance: instanceID(sc.Cluster.Instance), counters: telemetry.NewCounters()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if err := os.MkdirAll(sc.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("service: data dir: %w", err)
	}
	if err := s.connectNATS(); err != nil {
		return nil, err
	}
	s.pager = pipejs.NotifyPager{NC: s.nc}
	if o.VaultExecutors == nil {
		cfg.Actions.Mode = "dry-run"
		reason := o.DryRunReason
		if reason == "" {
			reason = "no Vault is configured (set VAULT_ADDR and VAULT_TOKEN, or service.vault in the config)"
		}
		s.log.Warn("DRY-RUN: no action will be applied: " + reason)
	}
	s.log.Info("killswitch starting", zap.String("where", sc.String()), zap.String("mode", string(cfg.Actions.Mode)),
		zap.String("instance", s.instance), zap.Int("vendors", len(cfg.Vendors)))

	replicas := sc.NATS.Replicas
	if _, err := pipejs.EnsureDetectionsStream(ctx, s.js, replicas); err != nil {
		return nil, err
	}
	lkey, err := s.ledgerKey()
	if err != nil {
		return nil, err
	}
	if s.ledger, err = ledgerjs.OpenStream(ctx, s.js, ledgerjs.StreamConfig{Replicas: replicas, Key: lkey, Clock: o.Clock,
		Log: s.log.Named("ledger"), OnBreak: func(b ledger.Break) { s.metrics.LedgerBreaks.WithLabelValues(string(b.Kind)).Inc() }}); err != nil {
		return nil, err
	}
	s.metrics.WatchLedger(func() bool { return !s.ledger.Integrity().Degraded() },
		func() bool { return s.ledger.Integrity().Failing() })
	s.metrics.VaultTokenBroad(o.VaultTokenBroad)
	if st := s.ledger.Integrity(); st.Degraded() {
		s.log.Error("ledger integrity degraded: the chain holds breaks no seal covers; the service goes on from the last good record "+
			"(see /api/status, `killswitch ledger verify`, then `killswitch ledger seal`)",
			zap.Int("unsealed", len(st.Unsealed)+int(st.UnsealedMore)), zap.Uint64("head", st.Head.Seq))
	}
	if s.incidents, err = incnatskv.Open(ctx, s.js, replicas); err != nil {
		return nil, err
	}
	store, err := natskv.Open(ctx, s.js, replicas)
	if err != nil {
		return nil, err
	}
	if s.pb, err = playbooks.New(ctx, playbooks.Options{Sources: o.Playbooks, Logger: s.log.Named("playbooks"), Clock: o.Clock, Timeout: o.EvalTimeout,
		OnReload: func(ev playbooks.ReloadEvent) {
			if ev.Err != nil {
				s.log.Error("playbook change refused: the previous playbooks keep serving", zap.Error(ev.Err))
			} else {
				s.log.Info("playbooks reloaded", zap.String("revision", ev.Revision), zap.String("previous", ev.Previous))
			}
		}}); err != nil {
		return nil, fmt.Errorf("service: playbooks: %w", err)
	}
	execs := actnats.Executors(s.nc, s.js)
	execs[killswitch.ActionWebhook] = actions.Webhooks{Endpoints: cfg.Actions.Webhooks, Secret: os.Getenv, Client: &http.Client{}}
	for t, e := range o.VaultExecutors {
		execs[t] = e
	}
	key, err := s.fingerprintKey()
	if err != nil {
		return nil, err
	}
	if s.runner, err = actions.New(cfg.Actions, actions.Deps{
		Store: store, Ledger: s.ledger, Executors: execs, Inventory: cfg.Vendors, Clock: o.Clock,
		Fingerprint: actions.NewFingerprinter(key), Instance: s.instance, Log: s.log.Named("actions"),
		Notifier: s.pager, // veto windows are announced where notify actions publish
	}); err != nil {
		return nil, err
	}
	checkpoints, err := pipejs.OpenCheckpoints(ctx, s.js, replicas)
	if err != nil {
		return nil, err
	}
	clustered := sc.Cluster.Enabled
	var storms pipeline.StormCounter = pipeline.LocalStorms{Guard: incidents.NewStormGuard(cfg.Incidents.Storm)}
	var arbiter pipeline.Arbiter // one process: the responder's Book decides alone
	if clustered {
		arbiter = s.incidents
		if s.storms, err = cluster.NewStorm(ctx, s.js, replicas, cfg.Incidents.Storm, s.log.Named("storm")); err != nil {
			return nil, err
		}
		storms = s.storms
	}
	kill := &pipeline.KillConfig{Settings: cfg.Kill, Store: store, Runner: s.runner, Incidents: s.incidents}
	if o.VaultClient != nil && o.VaultExecutors != nil {
		kill.Enumerator, kill.Reviver = vaultKill(o.VaultClient, actions.NewFingerprinter(key))
	}
	if s.pipe, err = pipeline.New(pipeline.Config{
		Detectors: cfg.DetectorConfig(), Shards: o.Shards, Sink: pipejs.Sink(s.js, s.metrics), Kill: kill,
		Responder: pipeline.ResponderConfig{
			Incidents: cfg.Incidents, Decider: s.pb, Actor: s.runner, Ledger: s.ledger, Store: s.incidents,
			Inventory: cfg.Vendors, Events: pipejs.NATSEvents{NC: s.nc}, Log: s.log.Named("responder"),
			Storm: storms, OnStorm: s.storm, Pager: s.pager, Arbiter: arbiter,
		},
		Approvals: s.runner.Approvals(), Counters: s.counters,
		Checkpoints: checkpoints, CheckpointEvery: o.CheckpointEvery,
		Clock: o.Clock, Log: s.log, Metrics: s.metrics,
	}); err != nil {
		return nil, err
	}
	eng := s.pipe.Engine()
	s.metrics.WatchDetectors(map[string]func() uint64{
		"late":       func() uint64 { return eng.Counters().Late },
		"clock_jump": func() uint64 { return eng.Counters().ClockRejected },
		"invalid":    func() uint64 { return eng.Counters().Rejected },
		"key_bound":  func() uint64 { return eng.Counters().KeysRefused },
	})
	if !clustered {
		// In a cluster each partition's incidents are loaded by its owner (cluster.Respond).
		if err := s.restoreIncidents(ctx); err != nil {
			return nil, err
		}
	}
	// The door: event times bounded against the clock, names validated, the body's
	// vendor checked against the subject (formats other than the native one attribute
	// vendors by address: no subject check), declared sensors only.
	door, err := telemetry.NewAdmission(cfg.Telemetry)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	vendorToken := 0
	if o.NewDecoder != nil {
		vendorToken = -1
	}
	var group *telnats.Group
	if clustered {
		group = &telnats.Group{Member: s.instance, Partitions: sc.Cluster.Partitions}
	}
	if s.src, err = telnats.NewJetStreamSource(ctx, s.nc, telnats.JetStreamOptions{
		Stream: sc.NATS.TelemetryStream, Subjects: []string{sc.NATS.TelemetrySubject}, Replicas: replicas,
		DeadLetter: telnats.DeadLetterOptions{Replicas: replicas},
		NewDecoder: o.NewDecoder, Counters: s.counters, Logger: s.log.Named("telemetry"),
		Admission: door, VendorToken: vendorToken, Clock: o.Clock, Group: group,
	}); err != nil {
		return nil, err
	}
	stream, err := s.js.Stream(ctx, sc.NATS.TelemetryStream)
	if err != nil {
		return nil, fmt.Errorf("service: telemetry stream: %w", err)
	}
	if clustered {
		if err := s.startCluster(ctx, stream, checkpoints, door, vendorToken); err != nil {
			return nil, err
		}
		return s, nil
	}
	cons, err := s.js.Consumer(ctx, sc.NATS.TelemetryStream, telnats.DefaultDurable)
	if err != nil {
		return nil, fmt.Errorf("service: telemetry consumer: %w", err)
	}
	if err := pipejs.Recover(ctx, pipejs.RecoverConfig{Pipeline: s.pipe, Checkpoints: checkpoints, Stream: stream, Consumer: cons,
		NewDecoder: o.NewDecoder, Admission: door, VendorToken: vendorToken, Log: s.log.Named("ingest")}); err != nil {
		return nil, err
	}
	if err := s.startHTTP(); err != nil {
		return nil, err
	}
	return s, nil
}

// startCluster makes the instance a member of the cluster: the detections' consumer
// group, the partitioned ingest and responder, the membership controller; then it binds
// the HTTP listener and joins (its share of the partitions comes to it).
func (s *Service) startCluster(ctx context.Context, stream jetstream.Stream, checkpoints *pipejs.Checkpoints,
	door *telemetry.Admission, vendorToken int) error {
	sc := &s.cfg.Service
	n := sc.Cluster.Partitions
	respondGroup, err := pipejs.Group{Member: s.instance, Partitions: n}.Create(ctx, s.js)
	if err != nil {
		return err
	}
	log := s.log.Named("cluster")
	s.ingest = cluster.NewIngest(cluster.IngestConfig{
		Engine: s.pipe.Engine(), Submit: s.pipe.Ingest().Submit, Checkpoints: checkpoints, Stream: stream, Partitions: n,
		NewDecoder: s.o.NewDecoder, Admission: door, VendorToken: vendorToken, CheckpointEvery: s.o.CheckpointEvery,
		Clock: s.o.Clock, Log: log, Metrics: s.metrics,
	})
	s.respond = cluster.NewRespond(s.pipe.Responder(), s.incidents, n, log)
	if err := s.startHTTP(); err != nil {
		return err
	}
	if s.members, err = cluster.NewMembers(ctx, cluster.MembersConfig{
		JS: s.js, Member: s.instance, Partitions: n, Replicas: sc.NATS.Replicas, HTTP: s.httpLn.Addr().String(),
		HeartbeatEvery: sc.Cluster.Heartbeat, DeadAfter: sc.Cluster.DeadAfter,
		Groups: []cluster.GroupRef{{Stream: sc.NATS.TelemetryStream, Group: telnats.DefaultGroup}, {Stream: pipejs.DetectionsStream, Group: respondGroup}},
		OnOwn: func(ctx context.Context, owned []int) {
			s.ingest.Own(ctx, owned)
			s.respond.Own(ctx, owned)
		},
		Clock: s.o.Clock, Log: log,
	}); err != nil {
		return err
	}
	if err := s.members.Join(ctx); err != nil {
		return err
	}
	s.log.Info("cluster mode: telemetry and detections partitioned by vendor between the instances",
		zap.String("instance", s.instance), zap.Int("partitions", n))
	return nil
}

// restoreIncidents makes every open or contained incident current again (and has the
// revocations of closed ones watched for use after revocation, within the watch). An incident
// that does not decode is reported and skipped: it cannot stop the service.
func (s *Service) restoreIncidents(ctx context.Context) error {
	all, err := s.incidents.Incidents(ctx)
	if err != nil {
		return fmt.Errorf("service: restore incidents: %w", err)
	}
	n := 0
	for _, in := range all {
		if in.State != incidents.StateClosed {
			s.pipe.Responder().Restore(in)
			n++
		} else if in.ContainedAt != nil {
			s.pipe.Responder().Restore(in) // its revoked credential may still be watched for use after revocation
		}
	}
	if n > 0 {
		s.log.Info("open incidents restored", zap.Int("incidents", n))
	}
	return nil
}

// storm is the storm guard's reaction: hold the destructive actions of the storm's
// vendors fleet-wide until its end, and page. Other vendors are not held.
func (s *Service) storm(ctx context.Context, st incidents.Storm) {
	reason := fmt.Sprintf("detection storm: %d vendors with a history escalated within the storm window", len(st.Vendors))
	if err := s.runner.Control().HoldStorm(ctx, actions.StormHold{Vendors: st.Vendors, Since: st.Since, Until: st.Until, Reason: reason}); err != nil {
		s.log.Error("storm guard could not hold the storm's vendors", zap.Error(err))
	}
	if err := s.pager.Page(ctx, "storm", map[string]any{"page": true, "reason": reason, "vendors": st.Vendors, "until": st.Until}); err != nil {
		s.log.Error("storm guard could not page", zap.Error(err))
	}
}

// instanceID returns the configured instance name, or the host name (reduced to
// letters, digits, '-' and '_') with a random suffix.
func instanceID(configured string) string {
	if configured != "" {
		return configured
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it panics instead)
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, host)
	return host[:min(len(host), 40)] + "-" + hex.EncodeToString(b)
}

// ledgerKey returns the ledger's MAC key: from the environment (ledger.EnvKey), else
// the key file in the data directory, created once (0600). The key is never logged;
// its public ID is.
func (s *Service) ledgerKey() (*ledger.Key, error) {
	if v := os.Getenv(ledger.EnvKey); v != "" {
		k, err := ledger.ParseKey(v)
		if err != nil {
			return nil, fmt.Errorf("service: $%s: %w", ledger.EnvKey, err)
		}
		s.log.Info("ledger MAC key from the environment", zap.String("key_id", k.ID()))
		return k, nil
	}
	p := filepath.Join(s.cfg.Service.DataDir, ledger.KeyFile)
	k, created, err := ledger.LoadOrCreateKeyFile(p)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	if created {
		s.log.Warn("no ledger MAC key: generated one; keep a copy (ledger verify needs it)", zap.String("file", p), zap.String("key_id", k.ID()))
	} else {
		s.log.Info("ledger MAC key", zap.String("file", p), zap.String("key_id", k.ID()))
	}
	return k, nil
}

// fingerprintKey returns the deployment's key for fingerprints of accessors, created
// once in the data directory.
func (s *Service) fingerprintKey() ([]byte, error) {
	p := filepath.Join(s.cfg.Service.DataDir, "fingerprint.key")
	if b, err := os.ReadFile(p); err == nil && len(b) >= 32 {
		return b, nil
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it panics instead)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return nil, fmt.Errorf("service: fingerprint key: %w", err)
	}
	return b, nil
}

func (s *Service) connectNATS() error {
	sc := &s.cfg.Service
	url := sc.NATS.URL
	if url == "" {
		host, portS, err := net.SplitHostPort(sc.NATS.Listen)
		if err != nil {
			return fmt.Errorf("service: nats listen: %w", err)
		}
		port, err := strconv.Atoi(portS)
		if err != nil {
			return fmt.Errorf("service: nats listen port %q: %w", portS, err)
		}
		if port == 0 {
			port = -1
		}
		auth, err := s.natsIdentities()
		if err != nil {
			return err
		}
		s.ns, err = embeddednats.Start(embeddednats.Options{Host: host, Port: port, StoreDir: filepath.Join(sc.DataDir, "nats"), Auth: auth})
		if err != nil {
			return err
		}
		url = s.ns.URL()
		s.log.Info("embedded NATS with JetStream (file storage, sync always), authentication and authorization on", zap.String("url", url))
	}
	creds := sc.NATS.CredsFile
	if def := embeddednats.CredsFile(sc.DataDir, embeddednats.RoleService); creds == "" && sc.NATS.NKeyFile == "" {
		if _, err := os.Stat(def); err == nil {
			creds = def
		}
	}
	nc, err := natsconn.Options{
		URL: url, CredsFile: creds, NKeyFile: sc.NATS.NKeyFile,
		TLSCA: sc.NATS.TLSCA, TLSCert: sc.NATS.TLSCert, TLSKey: sc.NATS.TLSKey, Name: "killswitch",
	}.Connect(s.log.Named("nats"))
	if err != nil {
		return err
	}
	s.nc = nc
	// The identity must be able to run the service: the JetStream API, and writing its
	// streams and buckets (probes change nothing).
	if err := natsconn.Check(context.Background(), nc, []string{"killswitch.ledger", "killswitch.ledger_checkpoints",
		"$KV." + actions.ClaimsBucket + "._check", "$KV." + incnatskv.Bucket + "._check"}, 0); err != nil {
		if errors.Is(err, natsconn.ErrNotPermitted) {
			return fmt.Errorf("service: the NATS identity (%s) cannot run Killswitch: %w (for an external server: install the "+
				"authorization of `killswitch creds nats-config` and give service.nats.creds_file)", orNone(creds), err)
		}
		// Not a refusal (the server reports a missing permission at once): NATS did not
		// answer — a node restarting, leaders being elected. Starting beats exiting.
		s.log.Warn("could not verify the NATS identity's permissions at start: NATS did not answer; going on", zap.Error(err))
	}
	s.js, err = jetstream.New(nc)
	return err
}

// natsIdentities loads or creates the embedded server's operator, account and signing
// keys and the service, operator and automation credentials in <data dir>/creds, and
// logs their paths (never their content).
func (s *Service) natsIdentities() (*embeddednats.Auth, error) {
	auth, created, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(s.cfg.Service.DataDir))
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	if len(created) > 0 {
		s.log.Warn("NATS authentication: generated the operator, account and signing keys; keep them private", zap.Strings("files", created))
	}
	for _, r := range embeddednats.StandardRoles() {
		p, made, err := auth.EnsureCreds(r, s.o.Clock.Now())
		if err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
		s.log.Info("NATS credentials", zap.String("role", string(r)), zap.String("file", p), zap.Bool("created", made))
	}
	return auth, nil
}

func orNone(creds string) string {
	if creds == "" {
		return "anonymous"
	}
	return creds
}

// Serve runs the stages until ctx is done, then shuts down.
func (s *Service) Serve(ctx context.Context) error {
	defer s.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	spawn := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				select {
				case errc <- fmt.Errorf("%s: %w", name, err):
				default: // another stage failed first: it shuts the service down
					s.log.Error("stage failed while shutting down", zap.String("stage", name), zap.Error(err))
				}
			}
		}()
	}
	var ingest telemetry.Handler = s.pipe.Ingest()
	respond := pipejs.RespondConfig{JS: s.js, Responder: s.pipe.Responder(), Pager: s.pager, Log: s.log.Named("respond"), Metrics: s.metrics}
	if s.members != nil {
		ingest, respond.Responder = s.ingest, s.respond
		respond.Group = &pipejs.Group{Member: s.instance, Partitions: s.cfg.Service.Cluster.Partitions}
		// pcgroups retries a member consumer refused during a rebalance ("filtered
		// consumer not unique") every AckWait + 0.5s: 15s would hold a moved vendor's
		// detections that long. Progress is signalled every AckWait/3 meanwhile.
		respond.AckWait = 3 * time.Second
		spawn("membership", s.members.Run)
		spawn("storm guard", s.storms.Run)
	}
	spawn("telemetry", func(ctx context.Context) error { return s.src.Run(ctx, ingest) })
	spawn("responder", func(ctx context.Context) error { return pipejs.Respond(ctx, respond) })
	spawn("playbook watcher", s.pb.Watch)
	spawn("control mirror", s.mirrorControl)
	spawn("housekeeping", s.housekeeping)
	spawn("http", func(ctx context.Context) error {
		err := s.httpSrv.Serve(s.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	s.ready.Store(true)
	s.log.Info("killswitch running", zap.String("http", s.httpLn.Addr().String()), zap.String("nats", s.nc.ConnectedUrlRedacted()))
	if s.o.Ready != nil {
		s.o.Ready(s.httpLn.Addr().String(), s.nc.ConnectedUrl())
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("stage failed: shutting down", zap.Error(runErr))
	}
	s.ready.Store(false)
	s.log.Info("shutting down: no new work is fetched; unfinished work stays unacknowledged")
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := s.httpSrv.Shutdown(sctx); err != nil {
		s.log.Warn("http shutdown", zap.Error(err))
	}
	wg.Wait()
	var checkpoint func(context.Context) error = s.pipe.Ingest().Checkpoint
	if s.members != nil {
		checkpoint = s.ingest.Checkpoint
	}
	if err := checkpoint(sctx); err != nil {
		s.log.Warn("final checkpoint failed (the next start catches up from the stream)", zap.Error(err))
	}
	if s.members != nil {
		if err := s.members.Leave(sctx); err != nil {
			s.log.Warn("leaving the cluster failed: the others evict this instance when its heartbeat stops", zap.Error(err))
		}
	}
	return runErr
}

// mirrorControl keeps the guard rails' mirror of the control bucket (pause, breaker,
// budgets, cooldowns) until ctx is done. A broken watch is restarted; meanwhile the
// guard rails read the bucket itself.
func (s *Service) mirrorControl(ctx context.Context) error {
	for {
		err := s.runner.Control().Watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("control mirror: the watch ended; reading the bucket until it is back", zap.Error(err))
		if err := clock.Sleep(ctx, time.Second); err != nil {
			return nil
		}
	}
}

// housekeeping runs the pipeline's processing-time work every TickEvery and exports the
// telemetry source's dead-letter counts.
func (s *Service) housekeeping(ctx context.Context) error {
	t := time.NewTicker(s.o.TickEvery)
	defer t.Stop()
	// Veto windows end on time (within a second), not at the next full tick.
	approvals := time.NewTicker(min(time.Second, s.o.TickEvery))
	defer approvals.Stop()
	var lastDead map[telemetry.Reason]uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-approvals.C:
			if err := s.pipe.TickApprovals(ctx); err != nil && ctx.Err() == nil {
				s.metrics.TickFailures.Inc()
				s.log.Warn("approvals check failed (retried)", zap.Error(err))
			}
			continue
		case <-t.C:
		}
		if err := s.pipe.Tick(ctx, s.o.Clock.Now()); err != nil && ctx.Err() == nil {
			s.metrics.TickFailures.Inc()
			s.log.Warn("processing-time checks failed (retried on the next tick)", zap.Error(err))
		}
		cur := s.counters.Snapshot().Rejected
		for r, n := range cur {
			if d := n - lastDead[r]; d > 0 {
				s.metrics.DeadLetters.WithLabelValues(string(r)).Add(float64(d))
			}
		}
		lastDead = cur
	}
}

// close releases everything, in reverse order of creation.
func (s *Service) close() {
	if s.pipe != nil {
		if err := s.pipe.Close(); err != nil {
			s.log.Warn("closing the detectors", zap.Error(err))
		}
	}
	if s.ledger != nil {
		if err := s.ledger.Close(); err != nil {
			s.log.Warn("closing the ledger", zap.Error(err))
		}
	}
	if s.nc != nil {
		if err := s.nc.Drain(); err != nil {
			s.log.Debug("draining the NATS connection", zap.Error(err))
		}
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
	}
}
