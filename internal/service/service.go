// Package service assembles `killswitch run`: NATS (embedded or remote), the ingest
// stage, the detectors, the responder (incidents, playbooks, guard rails, actions, ledger),
// the HTTP API and the metrics. It holds wiring only; the logic lives in the stages.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/internal/clock"
	"github.com/killswitch-dev/killswitch/internal/config"
	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/metrics"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/killswitch-dev/killswitch/internal/pipeline"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/telemetry"
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
	// DryRunReason says why there are no Vault executors (logged loudly, in /api/status).
	DryRunReason string
	// APIToken is the bearer token of the HTTP API; empty generates one into
	// DataDir/api-token (0600).
	APIToken string
	// Format is the telemetry format: json (default), vpc, ocsf or zeek.
	NewDecoder func() telemetry.Decoder
	// Shards is the number of detector shards. Default GOMAXPROCS.
	Shards int
	// CheckpointEvery is how often detector state is checkpointed. Default 30s.
	CheckpointEvery time.Duration
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

	ns     *embeddednats.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	engine *detectors.Sharded
	ingest *pipeline.Ingest
	src    *telemetry.JetStreamSource
	runner *actions.Runner
	resp   *pipeline.Responder
	pb     *playbooks.Engine
	store  *pipeline.KVIncidents

	httpSrv  *http.Server
	httpLn   net.Listener
	ready    atomic.Bool
	instance string
}

// Run starts the service and blocks until ctx is done, then shuts down gracefully:
// it stops fetching, lets in-flight work finish (or abandons it unacknowledged),
// checkpoints the detectors and closes everything.
func Run(ctx context.Context, o Options) error {
	s, err := start(ctx, o)
	if err != nil {
		return err
	}
	return s.serve(ctx)
}

func start(ctx context.Context, o Options) (_ *Service, err error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Shards <= 0 {
		o.Shards = runtime.GOMAXPROCS(0)
	}
	cfg := o.Config
	sc := &cfg.Service
	s := &Service{o: o, cfg: cfg, log: o.Log, metrics: metrics.New(), instance: instanceID()}
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
	mode := playbooks.Mode(cfg.Actions.Mode)
	if o.VaultExecutors == nil {
		mode = playbooks.ModeDryRun
		cfg.Actions.Mode = string(mode)
		reason := o.DryRunReason
		if reason == "" {
			reason = "no Vault is configured (set VAULT_ADDR and VAULT_TOKEN, or service.vault in the config)"
		}
		s.log.Warn("DRY-RUN: no action will be applied: " + reason)
	}
	s.log.Info("killswitch starting", zap.String("where", sc.String()), zap.String("mode", string(mode)),
		zap.String("instance", s.instance), zap.Int("vendors", len(cfg.Vendors)))

	replicas := sc.NATS.Replicas
	if _, err := pipeline.EnsureDetectionsStream(ctx, s.js, replicas); err != nil {
		return nil, err
	}
	led, err := ledger.OpenStream(ctx, s.js, ledger.StreamConfig{Replicas: replicas})
	if err != nil {
		return nil, err
	}
	if s.store, err = pipeline.NewKVIncidents(ctx, s.js, replicas); err != nil {
		return nil, err
	}
	kv, err := actions.NewKVStore(ctx, s.js, replicas)
	if err != nil {
		return nil, err
	}
	pb, err := playbooks.New(ctx, playbooks.Options{Sources: o.Playbooks, Logger: s.log.Named("playbooks"),
		OnReload: func(ev playbooks.ReloadEvent) {
			if ev.Err != nil {
				s.log.Error("playbook change refused: the previous playbooks keep serving", zap.Error(ev.Err))
			} else {
				s.log.Info("playbooks reloaded", zap.String("revision", ev.Revision), zap.String("previous", ev.Previous))
			}
		}})
	if err != nil {
		return nil, fmt.Errorf("service: playbooks: %w", err)
	}
	s.pb = pb
	execs := actions.Messaging(s.nc, s.js, cfg.Actions.Webhooks, os.Getenv)
	for t, e := range o.VaultExecutors {
		execs[t] = e
	}
	key, err := s.fingerprintKey()
	if err != nil {
		return nil, err
	}
	s.runner, err = actions.New(cfg.Actions, actions.Options{}, actions.Deps{
		Store: kv, Ledger: led, Executors: execs, Inventory: cfg.Vendors, Clock: clock.Real{},
		Fingerprint: actions.NewFingerprinter(key), Instance: s.instance, Log: s.log.Named("actions"),
		OnUpdate: func(ctx context.Context, incident, vendor, cred string, ref ledger.ActionRef) {
			if err := s.resp.ActionUpdate(ctx, incident, vendor, cred, ref); err != nil {
				s.log.Error("incident update failed", zap.String("incident", incident), zap.Error(err))
			}
		},
	})
	if err != nil {
		return nil, err
	}
	incidents := ledger.NewIncidents(ledger.IncidentConfig{})
	if n, err := s.store.RestoreOpen(ctx, incidents); err != nil {
		return nil, err
	} else if n > 0 {
		s.log.Info("open incidents restored", zap.Int("incidents", n))
	}
	s.resp = pipeline.NewResponder(pipeline.ResponderConfig{
		Incidents: incidents, Decider: pb, Actor: s.runner, Ledger: led, Store: s.store,
		Inventory: cfg.Vendors, Events: pipeline.NATSEvents{NC: s.nc}, Clock: clock.Real{},
		Log: s.log.Named("responder"), Metrics: s.metrics, Health: s.health,
		OnStorm: func(ctx context.Context, vendors []string) {
			reason := fmt.Sprintf("detection storm: %d vendors escalated within the storm window (%v)", len(vendors), vendors)
			if err := s.runner.Pause(ctx, "storm-guard", reason); err != nil {
				s.log.Error("storm guard could not pause automation", zap.Error(err))
			}
			b, _ := json.Marshal(map[string]any{"page": true, "reason": reason, "vendors": vendors})
			_ = s.nc.Publish(actions.NotifySubjectPrefix+".storm", b)
		},
	})

	s.engine, err = detectors.NewSharded(*cfg, o.Shards, pipeline.Sink(s.js, s.metrics))
	if err != nil {
		return nil, err
	}
	s.src, err = telemetry.NewJetStreamSource(ctx, s.nc, telemetry.JetStreamOptions{
		Stream: sc.NATS.TelemetryStream, Subjects: []string{sc.NATS.TelemetrySubject}, Replicas: replicas,
		NewDecoder: o.NewDecoder, Logger: s.log.Named("telemetry"),
	})
	if err != nil {
		return nil, err
	}
	s.ingest, err = pipeline.NewIngest(ctx, pipeline.IngestConfig{
		Engine: s.engine, JS: s.js, CheckpointEvery: o.CheckpointEvery, Replicas: replicas,
		NewDecoder: o.NewDecoder, Log: s.log.Named("ingest"), Metrics: s.metrics,
	})
	if err != nil {
		return nil, err
	}
	stream, err := s.js.Stream(ctx, sc.NATS.TelemetryStream)
	if err != nil {
		return nil, fmt.Errorf("service: telemetry stream: %w", err)
	}
	cons, err := s.js.Consumer(ctx, sc.NATS.TelemetryStream, "killswitch-telemetry")
	if err != nil {
		return nil, fmt.Errorf("service: telemetry consumer: %w", err)
	}
	if err := s.ingest.Recover(ctx, stream, cons); err != nil {
		return nil, err
	}
	if err := s.startHTTP(); err != nil {
		return nil, err
	}
	return s, nil
}

func instanceID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	host, _ := os.Hostname()
	return host + "-" + hex.EncodeToString(b)
}

// fingerprintKey returns the deployment's key for fingerprints of accessors, created
// once in the data directory.
func (s *Service) fingerprintKey() ([]byte, error) {
	p := filepath.Join(s.cfg.Service.DataDir, "fingerprint.key")
	if b, err := os.ReadFile(p); err == nil && len(b) >= 32 {
		return b, nil
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
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
		port, _ := strconv.Atoi(portS)
		if port == 0 {
			port = -1
		}
		s.ns, err = embeddednats.Start(embeddednats.Options{Host: host, Port: port, StoreDir: filepath.Join(sc.DataDir, "nats")})
		if err != nil {
			return err
		}
		url = s.ns.URL()
		s.log.Info("embedded NATS with JetStream (file storage, sync always)", zap.String("url", url))
	}
	nc, err := natsconn.Options{
		URL: url, CredsFile: sc.NATS.CredsFile, NKeyFile: sc.NATS.NKeyFile,
		TLSCA: sc.NATS.TLSCA, TLSCert: sc.NATS.TLSCert, TLSKey: sc.NATS.TLSKey, Name: "killswitch",
	}.Connect(s.log.Named("nats"))
	if err != nil {
		return err
	}
	s.nc = nc
	s.js, err = jetstream.New(nc)
	return err
}

// health is the telemetry health the playbooks see.
func (s *Service) health() playbooks.Health {
	c := s.src.Counters().Snapshot()
	h := playbooks.Health{}
	if c.Received > 0 {
		h.DeadLetterRate = float64(c.DeadLettered) / float64(c.Received)
	}
	return h
}

// serve runs the stages until ctx is done, then shuts down.
func (s *Service) serve(ctx context.Context) error {
	defer s.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	spawn := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	spawn("telemetry", func(ctx context.Context) error { return s.src.Run(ctx, s.ingest) })
	spawn("responder", s.respond)
	spawn("playbook watcher", s.pb.Watch)
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
	_ = s.httpSrv.Shutdown(sctx)
	wg.Wait()
	if err := s.ingest.Checkpoint(sctx); err != nil {
		s.log.Warn("final checkpoint failed (the next start catches up from the stream)", zap.Error(err))
	}
	return runErr
}

// housekeeping runs the processing-time checks: silence, approval expiry, dead-letter metrics.
func (s *Service) housekeeping(ctx context.Context) error {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	var lastDead map[telemetry.Reason]uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.engine.Tick(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("silence check failed", zap.Error(err))
		}
		if _, err := s.runner.ExpireHeld(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("approval expiry failed", zap.Error(err))
		}
		cur := s.src.Counters().Snapshot().Rejected
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
	if s.engine != nil {
		_ = s.engine.Close()
	}
	if s.nc != nil {
		_ = s.nc.Drain()
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
	}
}
