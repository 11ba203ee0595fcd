//go:build !linux

package telemetry

import "testing"

// threadCPU reports nothing where per-thread CPU time is not available: benchmarks
// then show wall-clock ns/op only.
type threadCPU struct{}

func startThreadCPU() threadCPU { return threadCPU{} }

func (threadCPU) report(*testing.B, int) {}
