package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/actions/vault"
)

// Service configures `killswitch run`: where NATS, Vault and the HTTP API are. Every
// field can be overridden from the environment (see ApplyEnv).
type Service struct {
	// NATS configures the transport.
	NATS NATS `yaml:"nats"`
	// HTTP configures the API, health and metrics server.
	HTTP HTTP `yaml:"http"`
	// Vault configures the Vault connection; empty Addr means dry-run.
	Vault vault.Settings `yaml:"vault"`
	// DataDir holds the embedded NATS server's storage. Default ./killswitch-data.
	DataDir string `yaml:"data_dir"`
	// Cluster makes this instance one of several sharing the work on one NATS
	// JetStream cluster.
	Cluster Cluster `yaml:"cluster"`
}

// Cluster configures running several instances against one NATS (JetStream) cluster:
// telemetry and detections are partitioned by vendor between the instances alive, and
// a dead instance's partitions move to the survivors.
type Cluster struct {
	// Enabled turns the partitioned mode on. It needs an external NATS (service.nats.url)
	// and the same ledger key, fingerprint key and API users on every instance (a shared
	// data directory, or copies of its key files).
	Enabled bool `yaml:"enabled"`
	// Instance is this instance's member name, unique in the fleet (letters, digits,
	// '-' and '_'). Default the host name with a random suffix.
	Instance string `yaml:"instance"`
	// Partitions is the number of vendor partitions, fixed for the life of the group
	// (it is also the most instances that can share the work). Default 16.
	Partitions int `yaml:"partitions"`
	// Heartbeat is how often the instance heartbeats and checks the others. Default
	// 250ms.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// DeadAfter is how long an instance may miss heartbeats before the others evict it
	// and take its partitions: the floor of a failover. Default 1s, at least three
	// heartbeats. An instance evicted while alive (a long pause) joins again.
	DeadAfter time.Duration `yaml:"dead_after"`
}

// NATS configures the NATS connection and subjects.
type NATS struct {
	// URL of the NATS server; empty starts an embedded server on Listen.
	URL string `yaml:"url"`
	// Listen is the embedded server's address. Default 127.0.0.1:4222.
	Listen string `yaml:"listen"`
	// CredsFile is a NATS credentials file.
	CredsFile string `yaml:"creds_file"`
	// NKeyFile is an nkey seed file.
	NKeyFile string `yaml:"nkey_file"`
	// TLSCA, TLSCert and TLSKey configure TLS to the server.
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TelemetrySubject is the subject filter telemetry is read from. Default egress.>.
	TelemetrySubject string `yaml:"telemetry_subject"`
	// TelemetryStream is the JetStream stream holding telemetry. Default EGRESS.
	TelemetryStream string `yaml:"telemetry_stream"`
	// Replicas for every stream and bucket Killswitch creates. Default 1; use 3 in
	// production, across failure domains.
	Replicas int `yaml:"replicas"`
}

// HTTP configures the HTTP server.
type HTTP struct {
	// Listen is the address to serve on. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// TokenFile holds the token of the API user "admin" (also KILLSWITCH_API_TOKEN,
	// which wins); other users are managed with `killswitch users`.
	TokenFile string `yaml:"token_file"`
}

// Environment variables that override the file.
const (
	EnvNATSURL    = "KILLSWITCH_NATS_URL"
	EnvHTTPListen = "KILLSWITCH_HTTP_LISTEN"
	EnvAPIToken   = "KILLSWITCH_API_TOKEN"
	EnvDataDir    = "KILLSWITCH_DATA_DIR"
	EnvCluster    = "KILLSWITCH_CLUSTER"
	EnvInstance   = "KILLSWITCH_INSTANCE"
	EnvVaultAddr  = "VAULT_ADDR"
	EnvVaultToken = vault.EnvToken
)

// ApplyEnv overrides settings from the environment (getenv is os.Getenv in the binary)
// and fills defaults. Secrets read from the environment (API token, Vault token) are not
// stored in the Service: read them with getenv where they are used.
func (s *Service) ApplyEnv(getenv func(string) string) {
	if v := getenv(EnvNATSURL); v != "" {
		s.NATS.URL = v
	}
	if v := getenv(EnvHTTPListen); v != "" {
		s.HTTP.Listen = v
	}
	if v := getenv(EnvDataDir); v != "" {
		s.DataDir = v
	}
	if v := getenv(EnvVaultAddr); v != "" {
		s.Vault.Addr = v
	}
	if v := getenv(EnvCluster); v == "true" || v == "1" {
		s.Cluster.Enabled = true
	}
	if v := getenv(EnvInstance); v != "" {
		s.Cluster.Instance = v
	}
	if s.Cluster.Partitions == 0 {
		s.Cluster.Partitions = 16
	}
	if s.Cluster.Heartbeat == 0 {
		s.Cluster.Heartbeat = 250 * time.Millisecond
	}
	if s.Cluster.DeadAfter == 0 {
		s.Cluster.DeadAfter = time.Second
	}
	if s.NATS.Listen == "" {
		s.NATS.Listen = "127.0.0.1:4222"
	}
	if s.NATS.TelemetrySubject == "" {
		s.NATS.TelemetrySubject = "egress.>"
	}
	if s.NATS.TelemetryStream == "" {
		s.NATS.TelemetryStream = "EGRESS"
	}
	if s.NATS.Replicas == 0 {
		s.NATS.Replicas = 1
	}
	if s.HTTP.Listen == "" {
		s.HTTP.Listen = "127.0.0.1:8080"
	}
	if s.DataDir == "" {
		s.DataDir = "killswitch-data"
	}
	if s.Vault.AppRole != nil && s.Vault.AppRole.Mount == "" {
		s.Vault.AppRole.Mount = "approle"
	}
}

// validate checks the service settings, reporting through bad.
func (s *Service) validate(bad func(format string, args ...any)) {
	if s.NATS.URL != "" {
		for _, u := range strings.Split(s.NATS.URL, ",") {
			p, err := url.Parse(strings.TrimSpace(u))
			if err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss") {
				bad("service.nats.url: %q is not a nats://, tls://, ws:// or wss:// URL", u)
			}
		}
	}
	if s.NATS.Listen != "" {
		if _, _, err := net.SplitHostPort(s.NATS.Listen); err != nil {
			bad("service.nats.listen: %v", err)
		}
	}
	if (s.NATS.TLSCert == "") != (s.NATS.TLSKey == "") {
		bad("service.nats: tls_cert and tls_key go together")
	}
	if s.NATS.Replicas < 0 || s.NATS.Replicas > 5 {
		bad("service.nats.replicas: %d is not between 1 and 5", s.NATS.Replicas)
	}
	if c := s.Cluster; c.Enabled {
		if s.NATS.URL == "" {
			bad("service.cluster: several instances need an external NATS (service.nats.url)")
		}
		if c.Partitions < 1 || c.Partitions > 1024 {
			bad("service.cluster.partitions: %d is not between 1 and 1024", c.Partitions)
		}
		if c.Heartbeat < 0 || c.DeadAfter < 3*c.Heartbeat {
			bad("service.cluster: dead_after (%s) must be at least three heartbeats (%s)", c.DeadAfter, c.Heartbeat)
		}
		if c.Instance != "" && !validInstance(c.Instance) {
			bad("service.cluster.instance: %q: use 1 to 64 letters, digits, '-' or '_'", c.Instance)
		}
	}
	if s.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(s.HTTP.Listen); err != nil {
			bad("service.http.listen: %v", err)
		}
	}
	if s.Vault.Addr != "" {
		if p, err := url.Parse(s.Vault.Addr); err != nil || p.Host == "" || (p.Scheme != "http" && p.Scheme != "https") {
			bad("service.vault.addr: %q is not an http(s) URL", s.Vault.Addr)
		}
	}
	if a := s.Vault.AppRole; a != nil {
		if a.RoleID == "" || a.SecretIDFile == "" {
			bad("service.vault.approle: role_id and secret_id_file are required")
		}
		if s.Vault.TokenFile != "" {
			bad("service.vault: token_file and approle are exclusive")
		}
	}
}

// String summarises where the service connects, for the start-up log (no secrets).
func (s *Service) String() string {
	nats := s.NATS.URL
	if nats == "" {
		nats = "embedded on " + s.NATS.Listen
	}
	vault := s.Vault.Addr
	if vault == "" {
		vault = "none (dry-run)"
	}
	return fmt.Sprintf("nats=%s vault=%s http=%s data=%s", nats, vault, s.HTTP.Listen, s.DataDir)
}

// validInstance reports whether name can be a member name: it is a NATS consumer name
// and a KV key.
func validInstance(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
