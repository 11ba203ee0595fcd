// Package config loads and validates the Killswitch configuration file. It composes the
// settings each stage owns — the vendor inventory (killswitch.Inventory), the detectors'
// Settings, the incidents' Settings, the guard rails' Settings — with the service's own
// (where NATS, Vault and the HTTP API are). Decoding is strict (unknown fields are
// errors) and every error names the offending field.
//
// Only cmd and the service wiring import this package: a stage takes its own Settings.
//
// The zero Config is valid: vendors and credentials seen in telemetry get default
// detectors, and no credential is known to be revocable.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/telemetry"
	"gopkg.in/yaml.v3"
)

// ErrInvalid is wrapped by every validation error (it is killswitch.ErrInvalid).
var ErrInvalid = killswitch.ErrInvalid

// Config is the whole configuration file.
type Config struct {
	// Detectors holds the detector settings every vendor inherits.
	Detectors detectors.Settings `yaml:"detectors"`
	// Vendors is the vendor inventory, keyed by vendor name as it appears in telemetry.
	Vendors killswitch.Inventory `yaml:"vendors"`
	// Incidents configures how detections are grouped into incidents, and the storm guard.
	Incidents incidents.Settings `yaml:"incidents"`
	// Actions configures the guard rails and the webhook endpoints.
	Actions actions.Settings `yaml:"actions"`
	// Kill configures kill-vendor and restore: a second approver, the wrapping TTL of
	// re-issued credentials, the false-positive hold after a restore.
	Kill pipeline.KillSettings `yaml:"kill"`
	// Telemetry configures the door every event passes: event-time bounds, name limits
	// and the declared sensors.
	Telemetry telemetry.Settings `yaml:"telemetry"`
	// Service configures `killswitch run`: NATS, Vault and the HTTP API.
	Service Service `yaml:"service"`
}

// DetectorConfig returns what the detectors engine is built from.
func (c *Config) DetectorConfig() detectors.Config {
	return detectors.Config{Settings: c.Detectors, Vendors: c.Vendors}
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a YAML configuration strictly (unknown fields are errors) and validates it.
// An empty document is the zero Config.
func Parse(r io.Reader) (*Config, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the configuration and returns every problem found, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	c.Service.validate(func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
	})
	return errors.Join(
		c.Detectors.Validate(c.Vendors),
		c.Vendors.Validate(),
		c.Incidents.Validate(),
		c.Actions.Validate(),
		c.Telemetry.Validate(),
		errors.Join(errs...),
	)
}
