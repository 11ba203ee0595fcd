package main

import (
	"fmt"
	"io"
	"os"

	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/telemetry"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// loadConfig reads the configuration file, or returns the zero configuration (which
// works: vendors and credentials come from the telemetry) when path is empty.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return &config.Config{}, nil
	}
	return config.Load(path)
}

// decoderFor returns the decoder factory of a telemetry format: json (the native
// contract), vpc (AWS VPC Flow Logs v2), ocsf (OCSF Network Activity) or zeek (conn.log
// JSON). Formats other than json attribute vendors by destination address.
func decoderFor(format string, cfg *config.Config) (func() telemetry.Decoder, error) {
	if format == "" || format == "json" {
		return nil, nil // the sources' default
	}
	attr, err := telemetry.NewAttributor(cfg.Vendors)
	if err != nil {
		return nil, err
	}
	switch format {
	case "vpc":
		return func() telemetry.Decoder { return telemetry.NewVPCFlowDecoder(attr, telemetry.DecodeOptions{}) }, nil
	case "ocsf":
		return func() telemetry.Decoder { return telemetry.NewOCSFDecoder(attr, telemetry.DecodeOptions{}) }, nil
	case "zeek":
		return func() telemetry.Decoder { return telemetry.NewZeekConnDecoder(attr, telemetry.DecodeOptions{}) }, nil
	}
	return nil, fmt.Errorf("unknown telemetry format %q (json, vpc, ocsf, zeek)", format)
}

// newLogger returns a JSON logger on w at the given level (debug, info, warn, error).
func newLogger(w io.Writer, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(w), lvl)
	return zap.New(core), nil
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
