package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const good = `
detectors:
  interval: 5m
  sensitivity: 1.5
  disable: [silence]
vendors:
  mailer:
    description: transactional email
    cidrs: [203.0.113.0/24]
    allowed_destinations: [203.0.113.7, 198.51.100.0/24]
    caps:
      - bytes: 10GiB
        per: 1h
      - credential: mailer-api
        records: 100000
        per: 24h
    credentials:
      mailer-api: {kind: token, accessor: abc123}
      mailer-role: {kind: approle_secret_id, role: mailer, secret_id_accessor: def456}
      mailer-db: {kind: lease_prefix, lease_prefix: database/creds/mailer}
      mailer-kv: {kind: kv, path: vendors/mailer}
      mailer-policy: {kind: policy, policy: mailer}
      breakglass: {kind: token, accessor: zzz, protected: true, expected_idle: true}
service:
  nats: {url: "nats://127.0.0.1:4222"}
  vault: {addr: "http://127.0.0.1:8200"}
`

func TestParseGood(t *testing.T) {
	c, err := Parse(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Vendors["mailer"]
	if c.Detectors.Interval != 5*time.Minute || m.Caps[0].Bytes != 10<<30 || m.Caps[1].Records != 100000 ||
		!m.Credentials["breakglass"].Protected || m.CIDRs[0].String() != "203.0.113.0/24" {
		t.Fatalf("parsed %+v", c)
	}
	empty, err := Parse(strings.NewReader(""))
	if err != nil || empty.Vendors != nil {
		t.Fatalf("empty config: %+v, %v", empty, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown field", "detectorz: {}", "field detectorz not found"},
		{"bad duration", "detectors: {interval: fast}", "cannot unmarshal"},
		{"tiny interval", "detectors: {interval: 10ms}", "detectors.interval: must be at least 1s"},
		{"negative sensitivity", "detectors: {sensitivity: -1}", "detectors.sensitivity"},
		{"unknown kind", "detectors: {disable: [spikes]}", `unknown detector kind "spikes"`},
		{"bad size", "vendors: {v: {caps: [{bytes: 10XB, per: 1h}]}}", `unknown unit "xb"`},
		{"cap without limit", "vendors: {v: {caps: [{per: 1h}]}}", "vendors.v.caps[0]: set bytes or records"},
		{"cap without per", "vendors: {v: {caps: [{bytes: 1}]}}", "vendors.v.caps[0].per"},
		{"cap on unknown credential", "vendors: {v: {caps: [{bytes: 1, per: 1h, credential: x}]}}", `"x" is not a credential`},
		{"bad cidr", "vendors: {v: {cidrs: [300.1.1.0/24]}}", "300.1.1.0/24"},
		{"bad mode", "vendors: {v: {mode: yolo}}", "vendors.v.mode"},
		{"credential without kind", "vendors: {v: {credentials: {c: {}}}}", "vendors.v.credentials.c: kind is required"},
		{"unknown credential kind", "vendors: {v: {credentials: {c: {kind: ssh}}}}", `unknown kind "ssh"`},
		{"token without accessor", "vendors: {v: {credentials: {c: {kind: token}}}}", "needs accessor"},
		{"wildcard", "vendors: {v: {credentials: {c: {kind: lease, lease_id: 'database/*'}}}}", "wildcards"},
		{"broad prefix", "vendors: {v: {credentials: {c: {kind: lease_prefix, lease_prefix: database/}}}}", "too broad"},
		{"root policy", "vendors: {v: {credentials: {c: {kind: policy, policy: root}}}}", "cannot be quarantined"},
		{"bad nats url", "service: {nats: {url: 'http://x'}}", "service.nats.url"},
		{"bad vault addr", "service: {vault: {addr: 'vault:8200'}}", "service.vault.addr"},
		{"approle incomplete", "service: {vault: {approle: {role_id: r}}}", "role_id and secret_id_file"},
		{"yaml syntax", "vendors: [", "invalid configuration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) && !strings.Contains(tt.want, "300.") {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestServiceEnv(t *testing.T) {
	env := map[string]string{EnvNATSURL: "nats://10.0.0.1:4222", EnvVaultAddr: "https://vault:8200", EnvHTTPListen: "127.0.0.1:9999"}
	var s Service
	s.ApplyEnv(func(k string) string { return env[k] })
	if s.NATS.URL != env[EnvNATSURL] || s.Vault.Addr != env[EnvVaultAddr] || s.HTTP.Listen != "127.0.0.1:9999" ||
		s.NATS.TelemetryStream != "EGRESS" || s.DataDir == "" {
		t.Fatalf("service = %+v", s)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(good)
	f.Add("vendors: {v: {caps: [{bytes: 1, per: 1h}]}}")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("a parsed config does not validate: %v", err)
		}
	})
}
