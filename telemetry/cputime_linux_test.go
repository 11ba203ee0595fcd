package telemetry

import (
	"runtime"
	"syscall"
	"testing"
	"time"
)

// threadCPU measures the CPU time the calling goroutine's OS thread spends, so that a
// benchmark can report cpu-ns/op next to wall-clock ns/op on a machine shared with
// other work. The goroutine is locked to its thread until stop is called.
type threadCPU struct{ start time.Duration }

func startThreadCPU() threadCPU {
	runtime.LockOSThread()
	return threadCPU{start: threadCPUTime()}
}

// report adds a cpu-ns/op metric to b and unlocks the thread.
func (c threadCPU) report(b *testing.B, ops int) {
	d := threadCPUTime() - c.start
	runtime.UnlockOSThread()
	if ops > 0 {
		b.ReportMetric(float64(d.Nanoseconds())/float64(ops), "cpu-ns/op")
	}
}

func threadCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
