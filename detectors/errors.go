package detectors

import "errors"

var (
	// ErrConfig is wrapped by every error about a configuration the engine cannot use.
	// It is permanent: retrying with the same configuration fails again.
	ErrConfig = errors.New("detectors: invalid configuration")
	// ErrSnapshot is wrapped by every error about a snapshot that cannot be restored
	// (truncated, corrupt, wrong checksum, unknown version, or written with an
	// incompatible interval). It is permanent for that snapshot.
	ErrSnapshot = errors.New("detectors: bad snapshot")
	// ErrClosed is returned by a Sharded engine that has been closed.
	ErrClosed = errors.New("detectors: engine closed")
)
